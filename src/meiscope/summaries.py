"""The few aligned lines each command prints when it ends: the stage's headline, readable at a glance.

Every number is also in ``metrics/<stage>.json`` (``dvc metrics show``) and in MLflow; this is only
what a person reads in the terminal.
"""

from __future__ import annotations

from typing import Any, Callable

KINDS = ("simple", "complex", "conjunction")
VERDICTS = {1: "MEI beats", 0: "no difference", -1: "MEI loses"}


def _num(value: Any, fmt: str = ".3f") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return format(value, fmt)
    return str(value)


def _rank(m: dict) -> list[tuple[str, str]]:
    rows = [("cells selected", f"{m['n_selected']} of {m['n_cells']} (by {m['metric']})"),
            ("median split-half reliability", _num(m.get("median_reliability"), ".2f"))]
    if "gt_precision" in m:
        rows.append(("selection vs truth", f"precision {_num(m['gt_precision'], '.2f')}, "
                                           f"recall {_num(m['gt_recall'], '.2f')}"))
    return rows


def _tune(m: dict) -> list[tuple[str, str]]:
    rows = [("trials", f"{m['n_trials']} ({m['n_complete']} complete, {m['n_pruned']} pruned, {m['n_failed']} failed)")]
    if "best_value" in m:
        rows.append(("best validation score", f"{_num(m['best_value'])} (trial {m['best_trial']}; default "
                                              f"architecture {_num(m.get('default_value'))})"))
    return rows


def _train(m: dict) -> list[tuple[str, str]]:
    rows = [("test corr. to average", f"{_num(m.get('test_corr_to_avg_mean'))} (LN baseline "
                                      f"{_num(m.get('ln_test_corr_to_avg_mean'))})"),
            ("single-trial corr. / oracle", _num(m.get("test_fraction_of_oracle"), ".2f"))]
    if m.get("gt_fresh_corr_mean") is not None:
        rows.append(("corr. with true rates, fresh scenes", f"{_num(m['gt_fresh_corr_mean'])} (LN "
                                                            f"{_num(m.get('ln_gt_fresh_corr_mean'))}; "
                                                            f"{m['n_fresh_images']} scenes)"))
    return rows


def _mei(m: dict) -> list[tuple[str, str]]:
    return [("MEI / best natural image", f"{_num(m['mei_over_best_image_median'], '.2f')} (held-out model "
                                         f"{_num(m['mei_val_over_best_image_median'], '.2f')})"),
            ("starts agree (phase-aware)", f"{_num(m['seed_consistency_phase_median'], '.2f')}; "
                                           f"{m['frac_starts_disagree']:.0%} of neurons disagree")]


def _gabor(m: dict) -> list[tuple[str, str]]:
    return [("MEI / optimal Gabor", f"{_num(m['mei_over_gabor_median'], '.2f')} (held-out model "
                                    f"{_num(m['mei_val_over_gabor_median'], '.2f')})"),
            ("neurons where the MEI wins", f"{m['frac_neurons_mei_beats_gabor']:.0%} (held-out model "
                                           f"{m['frac_neurons_mei_val_beats_gabor']:.0%})"),
            ("MEI-Gabor similarity", _num(m["mei_gabor_similarity_median"], ".2f"))]


def _validate(m: dict) -> list[tuple[str, str]]:
    if m.get("skipped"):
        return [("closed loop", "skipped (no ground truth)")]
    rows = [("stimuli beating the true optimum", str(m["n_true_optimum_beaten"]))]
    for kind in KINDS:
        if not m.get(f"n_{kind}"):
            continue
        verdict = VERDICTS.get(m.get(f"gt_verdict_mei_vs_gabor_{kind}"), "n/a")
        rows.append((f"{kind} ({m[f'n_{kind}']} cells)",
                     f"MEI-truth corr. {_num(m.get(f'gt_mei_corr_median_{kind}'), '.2f')}, rate MEI / optimum "
                     f"{_num(m.get(f'gt_mei_rate_ratio_median_{kind}'), '.2f')}, vs optimal Gabor in truth: {verdict} "
                     f"(p = {_num(m.get(f'gt_sign_p_mei_vs_gabor_{kind}'), '.2g')})"))
    return rows


def _sessions(m: dict) -> list[tuple[str, str]]:
    shared = ", ".join(str(s) for s in m["shared"]) or "none (sessions.shared is empty)"
    return [("studied session", str(m["study"])), ("sharing its core", shared),
            ("sessions in the cache", ", ".join(str(s) for s in m["in_cache"]))]


STAGES: dict[str, Callable[[dict], list[tuple[str, str]]]] = {
    "rank": _rank, "sessions": _sessions, "tune": _tune, "train": _train, "mei": _mei, "gabor": _gabor,
    "validate": _validate}


def summary_lines(stage: str, result: Any) -> list[str]:
    """The lines to print after ``stage`` returned ``result`` (a metrics dict or a written path)."""
    if isinstance(result, dict) and stage in STAGES:
        try:
            rows = STAGES[stage](result)
        except (KeyError, TypeError):  # an unusual run (e.g. tiny data) lacks a figure: print what there is
            rows = []
    elif result is not None and not isinstance(result, dict):
        rows = [("wrote", str(result))]
    else:
        rows = []
    if not rows:
        return []
    width = max(len(label) for label, _ in rows)
    return [f"{stage}:"] + [f"  {label:<{width}}  {value}" for label, value in rows]
