"""In-silico experiments on response models: images in, responses out.

Every experiment here sees a model only as a torch module ``model(images (N, 1, H, W)) ->
(N, n_neurons)`` on a device; nothing depends on how it was trained. The modules build on each
other in one direction:

* :mod:`~meiscope.insilico.budget` -- the contrast budget every synthesised image is held to
  (fixed L2 norm in model space, inside the screen's pixel range);
* :mod:`~meiscope.insilico.scoring` -- scoring images on an ensemble (each image on its own
  neuron), eval mode, checks of models and neuron indices; uses the budget;
* :mod:`~meiscope.insilico.mei` -- Most Exciting Inputs by gradient ascent; uses both;
* :mod:`~meiscope.insilico.gabor` -- optimal Gabors under the same budget and Gabor fits to
  images; uses budget and scoring, never :mod:`~meiscope.insilico.mei`;
* :mod:`~meiscope.insilico.similarity` -- how alike two images are, with and without phase
  (numpy only).

The stage glue that reads a study's files and writes its outputs lives in
:mod:`meiscope.stages` (``mei``, ``gabor``, ``validate``, ``report``). This ``__init__`` imports
nothing, so importing one module does not pull in torch through another.
"""
