"""stethoedge.calibration: representative and held-out window sets for quantisation and verification."""
