"""The Neuropixels session's stimulus ablation (``meiscope ablation``, :mod:`meiscope.ablation`): which of
``neuropixels.training_stimuli`` the model trains on beside the natural scenes, from none to all six."""

from meiscope.ablation import AblationPlan, Arm
from meiscope.recordings.neuropixels.settings import TRAINABLE_STIMULI

PLAN = AblationPlan("neuropixels", "neuropixels.training_stimuli", (
    Arm("scenes", "natural scenes only", ()),
    Arm("gratings", "+ static gratings, flashes", ("static_gratings", "flashes")),
    Arm("movies", "+ natural movies one, three", ("natural_movie_one", "natural_movie_three")),
    Arm("all", "+ drifting gratings, Gabor patches (all seven)", TRAINABLE_STIMULI),
))
