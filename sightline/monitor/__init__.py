"""monitor stage: is production still like the validation data, and is the model still right?

Pure functions over numpy arrays (shapes stated in each docstring), plain data out; numpy, scipy and Pillow
only. It imports nothing from train/evaluate/serve (they call it):

  stats.py      image_stats(image, source): size, brightness, contrast, sharpness, format, JPEG quality, ...
  reference.py  ReferenceProfile (validation outputs, PCA basis, image statistics, k-NN bank) in reference.npz
  ood.py        open-set scores (MSP, energy, k-NN, relative Mahalanobis) and the per-bundle choice of one
  drift.py      window tests against the reference (BBSD KS, MMD, image statistics, class mix, unknown rate)
  alerts.py     fire after K significant windows, clear after K clean ones; state round-trips through JSON
  estimate.py   label-free accuracy (mean calibrated confidence) and measured accuracy (Wilson interval)
"""
