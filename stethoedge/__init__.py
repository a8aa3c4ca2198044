"""stethoedge: respiratory-sound classification from training to the stethoscope.

Stages live in subpackages: ``stethoedge.runtime`` (device side, no torch),
``stethoedge.train``, ``stethoedge.export``, ``stethoedge.calibration`` and
``stethoedge.firmware_bridge``. ``stethoedge.cli`` is the single command line.
"""

__version__ = "0.1.0"
