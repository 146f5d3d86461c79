"""Speech-quality measures (PESQ, the composite CSIG/CBAK/COVL, SSNR, STOI, SI-SDR and its parts): numpy
only, below everything that scores audio (training's PESQ pool, the fusion fit, evaluation)."""
