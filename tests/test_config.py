"""params.yaml parsing: defaults, the shipped file, and one-line errors naming the key."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from meiscope.config import ConfigError, Params, load_params, parse_params, replace_model

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_params_file_is_valid_and_matches_defaults_where_documented():
    params = load_params(ROOT / "params.yaml")
    assert isinstance(params, Params)
    assert params.data.source == "synthetic"
    assert params.synthetic.n_images == 118 and params.synthetic.repeats == 50
    assert params.model.layers == len(params.model.channels)


@pytest.mark.parametrize("raw, key", [
    ({"train": {"lrr": 0.1}}, "train.lrr"),
    ({"model": {"channels": [-4, 8, 8]}}, "model.channels[0]"),
    ({"model": {"readout": "spline"}}, "model.readout"),
    ({"model": {"layers": 2}}, "model.channels"),
    ({"model": {"first_kernel": 4}}, "model.first_kernel"),
    ({"mei": {"steps": 0}}, "mei.steps"),
    ({"mei": {"norm": -1.0}}, "mei.norm"),
    ({"train": {"seeds": [1]}}, "train.seeds"),
    ({"synthetic": {"kinds": {"simple": 0.9}}}, "synthetic.kinds"),
    ({"extract": {"response_window": [5, 2]}}, "extract.response_window"),
    ({"data": {"source": "s3"}}, "data.source"),
    ({"rank": {"top_k": "ten"}}, "rank.top_k"),
    ({"bogus": {}}, "bogus"),
    ({"container": {"sessions": ["A", "C"]}}, "container.sessions"),
    ({"container": {"sessions": ["A", "B", "D"]}}, "container.sessions"),
    ({"container": {"stimuli": ["static_gratings"]}}, "container.stimuli"),
    ({"container": {"stimuli": ["natural_scenes", "drifting_gratings"]}}, "container.stimuli"),
    ({"synthetic_container": {"match_fraction": 0.0}}, "synthetic_container.match_fraction"),
    ({"synthetic_container": {"movie_repeats": 1}}, "synthetic_container.movie_repeats"),
    ({"train": {"batches_per_source": -1}}, "train.batches_per_source"),
    ({"train": {"source_warmup_epochs": -1}}, "train.source_warmup_epochs"),
    ({"train": {"relocate_epochs": [0]}}, "train.relocate_epochs"),
    ({"train": {"relocate_epochs": [15.5]}}, "train.relocate_epochs[0]"),
    ({"data": {"recording": "container", "synthetic_container_dir": "data/synthetic"}}, "data.synthetic_container_dir"),
])
def test_bad_values_are_refused_naming_the_key(raw, key):
    with pytest.raises(ConfigError) as err:
        parse_params(raw)
    message = str(err.value)
    assert f"'{key}'" in message
    assert "\n" not in message


def test_ints_are_accepted_for_floats_but_bools_are_not_numbers():
    assert parse_params({"train": {"lr": 1}}).train.lr == 1.0
    with pytest.raises(ConfigError, match="train.lr"):
        parse_params({"train": {"lr": True}})


def test_load_params_names_the_file(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("model: {readout: spline}\n")
    with pytest.raises(ConfigError, match=str(bad)):
        load_params(bad)
    with pytest.raises(ConfigError, match="no such params file"):
        load_params(tmp_path / "missing.yaml")
    bad.write_text("data:\n  source: synthetic\nmodel: [unclosed\n")
    with pytest.raises(ConfigError, match=r"not valid YAML at line \d+, column \d+") as err:
        load_params(bad)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("text", ["", "# nothing but a comment\n", "{}\n"])
def test_an_empty_params_file_is_refused_not_run_on_defaults(tmp_path, text):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="params.yaml: empty"):
        load_params(path)


def test_synthetic_and_downloaded_sessions_never_share_a_folder():
    with pytest.raises(ConfigError, match="data.synthetic_dir"):
        parse_params({"data": {"allen_dir": "data/x", "synthetic_dir": "data/x/"}})


def test_replace_model_validates_the_overrides():
    base = parse_params({}).model
    tuned = replace_model(base, {"layers": 2, "channels": [8, 12], "readout": "factorized"})
    assert tuned.channels == [8, 12] and tuned.readout == "factorized" and tuned.loss == base.loss
    with pytest.raises(ConfigError):
        replace_model(base, {"layers": 2})


def test_cli_help_imports_no_heavy_library():
    code = ("import sys, meiscope.cli; "
            "heavy = [m for m in ('torch', 'mlflow', 'allensdk', 'optuna', 'pandas') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)
    out = subprocess.run([sys.executable, "-m", "meiscope.cli", "--help"], capture_output=True, text=True, check=True)
    from meiscope.pipeline import commands

    for command in ("synthesize", "download", *(s.name for s in commands())):
        assert command in out.stdout


@pytest.mark.parametrize("raw, key", [
    ({"sessions": {"shared": [0]}}, "sessions.shared[0]"),
    ({"sessions": {"shared": [900000002, 900000002]}}, "sessions.shared"),
    ({"sessions": {"shared": "all"}}, "sessions.shared"),
    ({"sessions": {"shared": [2.5]}}, "sessions.shared[0]"),
    ({"sessions": {"ids": [2]}}, "sessions.ids"),
    ({"extract": {"experiment_id": 7}, "sessions": {"shared": [3, 7]}}, "sessions.shared"),
])
def test_the_sessions_sharing_the_core_are_validated_naming_the_key(raw, key):
    with pytest.raises(ConfigError) as err:
        parse_params(raw)
    assert f"'{key}'" in str(err.value) and "\n" not in str(err.value)
    assert parse_params({}).sessions.shared == []  # default: the studied session alone
    assert load_params(ROOT / "params.yaml").sessions.shared == []


@pytest.mark.parametrize("text, key", [("mei:\n  norm_fraction: .inf\n", "mei.norm_fraction"),
                                       ("train:\n  lr: .nan\n", "train.lr"),
                                       ("neuropixels:\n  count_window: [0.03, .inf]\n", "neuropixels.count_window[1]")])
def test_non_finite_numbers_are_refused_naming_the_key(tmp_path, text, key):
    (tmp_path / "params.yaml").write_text(text)
    with pytest.raises(ConfigError, match=rf"'{re.escape(key)}' must be a finite number"):
        load_params(tmp_path / "params.yaml")


def _numeric_settings():
    """(key, scalar type) of every int and float setting of every section, recording sections included."""
    import dataclasses
    import typing

    from meiscope.config import _SECTIONS

    def walk(cls, prefix):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            hint, key = hints[f.name], f"{prefix}.{f.name}"
            if dataclasses.is_dataclass(hint):
                yield from walk(hint, key)
                continue
            args = [a for a in typing.get_args(hint) if a is not type(None)]
            kind = args[0] if typing.get_origin(hint) is typing.Union and args else hint
            if kind in (int, float):
                yield key, kind

    return [setting for name, cls in _SECTIONS for setting in walk(cls, name)]


def _nested(key, value):
    raw = node = {}
    *sections, last = key.split(".")
    for part in sections:
        node = node.setdefault(part, {})
    node[last] = value
    return raw


@pytest.mark.parametrize("key", [k for k, kind in _numeric_settings() if kind is float])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_every_float_setting_refuses_non_finite_values(key, value):
    with pytest.raises(ConfigError, match=rf"'{re.escape(key)}' must be a finite number"):
        parse_params(_nested(key, value))


# ports: checked (1024..65535) in the services section, which another module owns
NEGATIVE_OK = {"services.postgres_port", "services.mlflow_port"}


@pytest.mark.parametrize("key", [k for k, kind in _numeric_settings() if kind is int and k not in NEGATIVE_OK])
def test_every_int_setting_has_a_range_that_refuses_negative_values(key):
    with pytest.raises(ConfigError, match=rf"'{re.escape(key)}'") as err:
        parse_params(_nested(key, -1))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("raw, key", [
    ({"synthetic": {"seed": 2**32}}, "synthetic.seed"),
    ({"synthetic": {"n_cells": 20_000}}, "synthetic.n_cells"),
    ({"synthetic": {"spontaneous_s": -1.0}}, "synthetic.spontaneous_s"),
    ({"train": {"seeds": [1, -2]}}, "train.seeds[1]"),
    ({"rank": {"min_reliability": 1.5}}, "rank.min_reliability"),
    ({"rank": {"min_frac_sig_trials": 2.0}}, "rank.min_frac_sig_trials"),
    ({"tune": {"space": {"first_kernel": [4]}}}, "tune.space.first_kernel"),
    ({"tune": {"space": {"batch_size": [0]}}}, "tune.space.batch_size"),
    ({"neuropixels": {"session_ids": [0]}}, "neuropixels.session_ids[0]"),
    ({"neuropixels": {"snr_minimum": -1.0}}, "neuropixels.snr_minimum"),
    ({"allen": {"experiment_ids": [-5]}}, "allen.experiment_ids[0]"),
    ({"extract": {"image_width": 4}}, "extract.image_width"),
])
def test_range_checks_name_the_key(raw, key):
    with pytest.raises(ConfigError) as err:
        parse_params(raw)
    assert f"'{key}'" in str(err.value) and "\n" not in str(err.value)


# --------------------------------------------------------------------------------------
# synthetic.profile: named cortices whose keys a params file can still set
# --------------------------------------------------------------------------------------
def test_the_out_of_family_profile_supplies_its_kinds_and_rf_range():
    from meiscope.config import SYNTHETIC_PROFILES, SyntheticConfig

    cfg = parse_params({"synthetic": {"profile": "out_of_family"}}).synthetic
    planted = SYNTHETIC_PROFILES["out_of_family"]
    assert {k: getattr(cfg.kinds, k) for k in planted["kinds"]} == planted["kinds"]
    assert cfg.kinds.centre_surround > 0 and cfg.kinds.suppressed > 0
    assert cfg.rf_centre_range == [0.0, 1.0]
    # every other key keeps its default
    default = SyntheticConfig()
    assert cfg.seed == default.seed and cfg.suppressed_strength == default.suppressed_strength


def test_a_key_set_explicitly_wins_over_the_profile():
    cfg = parse_params({"synthetic": {"profile": "out_of_family", "rf_centre_range": [0.1, 0.9]}}).synthetic
    assert cfg.rf_centre_range == [0.1, 0.9] and cfg.kinds.centre_surround > 0  # kinds still from the profile
    kinds = {"simple": 0.5, "complex": 0.0, "conjunction": 0.0, "unresponsive": 0.5}
    cfg = parse_params({"synthetic": {"profile": "out_of_family", "kinds": kinds}}).synthetic
    assert cfg.kinds.simple == 0.5 and cfg.kinds.centre_surround == 0 and cfg.kinds.suppressed == 0
    assert cfg.rf_centre_range == [0.0, 1.0]


def test_the_gabor_family_profile_is_the_default_cortex():
    from meiscope.config import SyntheticConfig

    assert parse_params({"synthetic": {"profile": "gabor_family"}}).synthetic == SyntheticConfig()
    assert SyntheticConfig().kinds.centre_surround == 0 and SyntheticConfig().rf_centre_range == [0.2, 0.8]


def test_the_shipped_params_file_follows_its_profile():
    """params.yaml sets no key a profile supplies, so switching its profile switches the cortex."""
    import yaml

    from meiscope.config import SYNTHETIC_PROFILES

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    supplied = {key for profile in SYNTHETIC_PROFILES.values() for key in profile}
    assert not supplied & set(raw["synthetic"]), "params.yaml would override its profile"
    shipped = load_params(ROOT / "params.yaml").synthetic
    assert shipped.profile == "out_of_family"  # the default instrument: a cortex outside the model's family
    switched = parse_params({**raw, "synthetic": {**raw["synthetic"], "profile": "gabor_family"}}).synthetic
    assert shipped.kinds.suppressed > 0 and switched.kinds.suppressed == 0
    assert shipped.rf_centre_range == [0.0, 1.0] and switched.rf_centre_range == [0.2, 0.8]


@pytest.mark.parametrize("raw, key", [
    ({"profile": "in_the_models_image"}, "synthetic.profile"),
    ({"profile": None}, "synthetic.profile"),
    ({"rf_centre_range": [0.8, 0.2]}, "synthetic.rf_centre_range"),
    ({"rf_centre_range": [-0.1, 0.5]}, "synthetic.rf_centre_range"),
    ({"rf_centre_range": [0.2]}, "synthetic.rf_centre_range"),
    ({"centre_surround_ratio": [0.5, 2.0]}, "synthetic.centre_surround_ratio"),
    ({"centre_surround_on_fraction": 1.5}, "synthetic.centre_surround_on_fraction"),
    ({"suppressed_ratio": [3.0, 2.0]}, "synthetic.suppressed_ratio"),
    ({"suppressed_strength": [0.5, 2.5]}, "synthetic.suppressed_strength"),
    ({"kinds": {"simple": 0.2, "centre_surround": -0.1, "unresponsive": 0.9}}, "synthetic.kinds.centre_surround"),
    ({"kinds": {"simple": 0.5, "suppressed": 0.6}}, "synthetic.kinds"),
])
def test_out_of_family_settings_are_checked_naming_the_key(raw, key):
    with pytest.raises(ConfigError) as err:
        parse_params({"synthetic": raw})
    assert f"'{key}'" in str(err.value) and "\n" not in str(err.value)


# --------------------------------------------------------------------------------------
# recording_overrides: what a recording's data can afford
# --------------------------------------------------------------------------------------
WIDE = {"neuropixels": {"model": {"channels": [32, 32, 32]}, "tune": {"space": {"channels": [32, 32]}}}}


def test_the_studied_recordings_table_replaces_its_sections_values_and_no_other_recordings():
    studied = parse_params({"data": {"recording": "neuropixels"}, "recording_overrides": WIDE})
    assert studied.model.channels == [32, 32, 32] and studied.tune.space.channels == [32, 32]
    assert studied.model.first_kernel == Params().model.first_kernel  # keys the table leaves alone stay
    other = parse_params({"data": {"recording": "container"}, "recording_overrides": WIDE})
    assert other.model.channels == Params().model.channels and other.tune.space == Params().tune.space


def test_the_shipped_table_widens_the_neuropixels_core_only():
    container = load_params(ROOT / "params.yaml")
    neuropixels = load_params(ROOT / "params.yaml", ["data.recording=neuropixels"])
    assert container.model.channels == [16, 16, 16]
    assert neuropixels.model.channels == [32, 32, 32] and neuropixels.tune.space.channels == [32, 32]


def test_a_set_value_wins_over_the_recordings_table_and_survives_a_round_trip(tmp_path):
    from meiscope.config import as_dict

    path = tmp_path / "params.yaml"
    path.write_text(f"data: {{recording: neuropixels}}\nrecording_overrides: {WIDE}\n")
    params = load_params(path, ["model.channels=[8, 8, 8]"])
    assert params.model.channels == [8, 8, 8] and params.tune.space.channels == [32, 32]
    # a replicate writes the effective values back (as_dict): reading them again changes nothing
    assert parse_params(as_dict(params)) == params


@pytest.mark.parametrize("table, key", [
    ({"neuropixels": {"data": {"recording": "container"}}}, "recording_overrides.neuropixels.data"),
    ({"neuropixels": {"mei": {"steps": 10}}}, "recording_overrides.neuropixels.mei"),
    ({"neuropixels": {"model": [32]}}, "recording_overrides.neuropixels.model"),
    ({"neuropixels": {"model": {"channels": [32, 32]}}}, "recording_overrides.neuropixels"),
    ({"neuropixels": {"train": {"lr": float("nan")}}}, "recording_overrides.neuropixels"),
    ({"neuropixels": {"tune": {"space": {"chanels": [8, 8]}}}}, "recording_overrides.neuropixels"),
    ({"ephys": {}}, "recording_overrides.ephys"),
    ([1], "recording_overrides"),
])
def test_a_bad_table_is_refused_naming_it_whichever_recording_is_studied(table, key):
    for recording in ("container", "neuropixels"):
        with pytest.raises(ConfigError) as err:
            parse_params({"data": {"recording": recording}, "recording_overrides": table})
        assert f"'{key}'" in str(err.value) and "\n" not in str(err.value)


def test_an_error_in_the_files_own_value_is_not_blamed_on_the_table():
    with pytest.raises(ConfigError) as err:
        parse_params({"train": {"lr": -1.0}, "recording_overrides": WIDE})
    assert "'train.lr'" in str(err.value) and "recording_overrides" not in str(err.value)
