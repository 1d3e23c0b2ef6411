"""Allen Visual Coding - Neuropixels as a data source: spiking units, read through allensdk's ecephys API.

Modules: ``cache`` (allensdk's cache layout, opened safely), ``download`` (EcephysProjectCache
selection and lazy download), ``nwb`` (the NWB 2 writer of synthetic sessions), ``stimuli`` (static
gratings and Gabor patches in the scene frame), ``synthetic`` (the simulated session),
``responses`` (spike counts -> the response dataset), ``gabor_check`` (presented Gabor patches vs
the in-silico optimal Gabor).
"""
