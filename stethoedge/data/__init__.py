"""stethoedge.data: the torch-free data layer shared by training, calibration and the device commands.

* ``icbhi``      ICBHI 2017: annotations, file names, the official split, cycles
* ``sprsound``   SPRSound: record/event annotations, patients, events as cycles
* ``folders``    plain ``<root>/<class>/*.wav`` datasets
* ``metrics``    ICBHI challenge metrics (Sp, Se, Score, macro-F1, AUROC)
* ``evaluation`` ICBHI and SPRSound-challenge scores with patient-bootstrap intervals

Needs numpy (and scipy for AUROC) and ``stethoedge.runtime``; never torch, ``train`` or ``export``
(tests/test_import_rules.py). The old ``stethoedge.train.<module>`` names are aliases of these.
"""
