"""The container's stimulus ablation (``meiscope ablation``, :mod:`meiscope.ablation`): which of
``container.stimuli`` the model trains on, from natural scenes alone to all four."""

from meiscope.ablation import AblationPlan, Arm
from meiscope.recordings.container.settings import CONTAINER_STIMULI

PLAN = AblationPlan("container", "container.stimuli", (
    Arm("scenes", "natural scenes only", ("natural_scenes",)),
    Arm("gratings", "+ static gratings", ("natural_scenes", "static_gratings")),
    Arm("movies", "+ natural movies", ("natural_scenes", "natural_movies")),
    Arm("sparse_noise", "+ sparse noise", ("natural_scenes", "locally_sparse_noise")),
    Arm("all", "all four", CONTAINER_STIMULI),
))
