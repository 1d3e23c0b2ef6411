"""The synthetic cortex: natural-scenes sessions with a known ground truth, in Allen's NWB layout.

One module per piece, in the order the simulation runs:

- :mod:`~meiscope.synthetic.scenes`: 118 grayscale "natural" scenes (photographs bundled with
  scikit-image, mixed with dead-leaves / 1/f images), 0-255 screen pixels.
- :mod:`~meiscope.synthetic.population`: the simulated V1 population (simple, complex,
  conjunction and unresponsive cells), a differentiable ``torch.nn.Module`` of screen pixels.
- :mod:`~meiscope.synthetic.fluorescence`: rates -> Poisson spikes -> GCaMP6f calcium ->
  neuropil-contaminated fluorescence -> dF/F, on the ~30 Hz two-photon clock.
- :mod:`~meiscope.synthetic.nwb`: writes a session in the NWB 1.x layout that allensdk's
  ``BrainObservatoryNwbDataSet`` reads.
- :mod:`~meiscope.synthetic.cortex`: ``synthesize_sessions`` ties them together into an
  allensdk cache directory (``manifest.json``, ``ophys_experiment_data/<id>.nwb``,
  ``ground_truth/<id>.{npz,json}``).

The submodules import torch / h5py; import them directly (this package file imports nothing heavy).
"""
