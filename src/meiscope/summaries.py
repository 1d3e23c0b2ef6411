"""The few aligned lines each command prints when it ends: the stage's headline, readable at a glance.

Every number is also in ``metrics/<stage>.json`` (``dvc metrics show``) and in MLflow; this is only
what a person reads in the terminal. Labels, formats and verdict words are the metric catalogue's
(:mod:`meiscope.science.catalogue`), so the terminal and the report say the same.
"""

from __future__ import annotations

from typing import Any, Callable

from meiscope.science.catalogue import KINDS, format_metric, label_of, verdict_phrase


def _row(stage: str, key: str, value: str) -> tuple[str, str]:
    """A line labelled with the catalogue's label of ``key`` in ``metrics/<stage>.json``."""
    return label_of(stage, key), value


def _values(stage: str, m: dict, required: bool = False) -> Callable[[str], str]:
    """``key -> formatted value`` in ``m`` (``metrics/<stage>.json``); ``required``: a missing key raises KeyError."""
    def value(key: str) -> str:
        return format_metric(stage, key, m[key] if required else m.get(key))
    return value


def _named(stage: str, key: str, m: dict) -> str:
    """``<label> <value>``: a figure named inside another line."""
    return f"{label_of(stage, key)} {format_metric(stage, key, m.get(key))}"


def _rank(m: dict) -> list[tuple[str, str]]:
    f = _values("ranking", m)
    rows = [_row("ranking", "n_selected", f"{m['n_selected']} of {m['n_cells']} (by {m['metric']})"),
            _row("ranking", "median_reliability", f("median_reliability"))]
    if "gt_precision" in m:
        rows += [_row("ranking", "gt_precision", f("gt_precision")), _row("ranking", "gt_recall", f("gt_recall"))]
    return rows


def _tune(m: dict) -> list[tuple[str, str]]:
    f = _values("tune", m)
    rows = [_row("tune", "n_trials", f"{m['n_trials']} ({m['n_complete']} complete, {m['n_pruned']} pruned, "
                                     f"{m['n_failed']} failed)")]
    if "best_value" in m:
        rows.append(_row("tune", "best_value", f"{f('best_value')} (trial {m['best_trial']}; default "
                                               f"architecture {f('default_value')})"))
    return rows


def _train(m: dict) -> list[tuple[str, str]]:
    f = _values("train", m)
    rows = [_row("train", "test_corr_to_avg_mean", f"{f('test_corr_to_avg_mean')} (LN baseline "
                                                   f"{f('ln_test_corr_to_avg_mean')})"),
            _row("train", "test_fraction_of_oracle", f("test_fraction_of_oracle"))]
    if m.get("gt_fresh_corr_mean") is not None:
        rows.append(_row("train", "gt_fresh_corr_mean", f"{f('gt_fresh_corr_mean')} (LN {f('ln_gt_fresh_corr_mean')}; "
                                                        f"{m['n_fresh_images']} scenes)"))
    return rows


def _mei(m: dict) -> list[tuple[str, str]]:
    f = _values("mei", m, required=True)
    return [_row("mei", "mei_over_best_image_median", f"{f('mei_over_best_image_median')} (held-out model "
                                                      f"{f('mei_val_over_best_image_median')})"),
            _row("mei", "seed_consistency_phase_median", f"{f('seed_consistency_phase_median')}; "
                                                         f"{f('frac_starts_disagree')} of neurons disagree")]


def _gabor(m: dict) -> list[tuple[str, str]]:
    f = _values("gabor", m, required=True)
    return [_row("gabor", "mei_over_gabor_median", f"{f('mei_over_gabor_median')} (held-out model "
                                                   f"{f('mei_val_over_gabor_median')})"),
            _row("gabor", "frac_neurons_mei_beats_gabor", f"{f('frac_neurons_mei_beats_gabor')} (held-out model "
                                                          f"{f('frac_neurons_mei_val_beats_gabor')})"),
            _row("gabor", "mei_gabor_similarity_median", f("mei_gabor_similarity_median"))]


def _validate(m: dict) -> list[tuple[str, str]]:
    if m.get("skipped"):
        return [("closed loop", "skipped (no ground truth)")]
    rows = [_row("validate", "n_true_optimum_beaten", str(m["n_true_optimum_beaten"]))]
    for kind in KINDS:
        if not m.get(f"n_{kind}"):
            continue
        # the kind's figures, named by the catalogue's labels of the pooled ones
        per_kind = {key: m.get(f"{key}_{kind}") for key in ("gt_mei_corr_median", "gt_mei_rate_ratio_median",
                                                            "gt_verdict_mei_vs_gabor", "gt_sign_p_mei_vs_gabor")}
        verdict = verdict_phrase(per_kind["gt_verdict_mei_vs_gabor"])
        p = format_metric("validate", "gt_sign_p_mei_vs_gabor", per_kind["gt_sign_p_mei_vs_gabor"])
        rows.append((f"{kind} ({m[f'n_{kind}']} cells)",
                     f"{_named('validate', 'gt_mei_corr_median', per_kind)}; "
                     f"{_named('validate', 'gt_mei_rate_ratio_median', per_kind)}; "
                     f"{label_of('validate', 'gt_verdict_mei_vs_gabor')}: {verdict} (p = {p})"))
    return rows


def _sessions(m: dict) -> list[tuple[str, str]]:
    shared = ", ".join(str(s) for s in m["shared"]) or "none (sessions.shared is empty)"
    return [("studied session", str(m["study"])), ("sharing its core", shared),
            ("sessions in the cache", ", ".join(str(s) for s in m["in_cache"]))]


def _replicate(m: dict) -> list[tuple[str, str]]:
    """Which protocol the replicate figures printed above come from, and what drew their seeds."""
    from meiscope.replicate import protocol_of

    protocol = protocol_of(m)
    derivation = m.get("seed_derivation") or {}
    if protocol == "confirmatory":
        drawn = (f"drawn from src/ tree {derivation['src_tree'][:7]} and params.yaml blob "
                 f"{derivation['params_blob'][:7]} (seed_derivation in the summary)")
    else:
        drawn = f"{derivation.get('rule', 'fixed')}, looked at while developing"
    return [("protocol", f"{protocol} (commit {str(m.get('git_commit', 'unknown'))[:7]})"),
            ("seeds", f"{', '.join(str(s) for s in m['seeds'])}: {drawn}")]


STAGES: dict[str, Callable[[dict], list[tuple[str, str]]]] = {
    "rank": _rank, "sessions": _sessions, "tune": _tune, "train": _train, "mei": _mei, "gabor": _gabor,
    "validate": _validate, "replicate": _replicate}


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
