"""stethoedge.runtime: the device side. Feature spec, audio loading, bundles, backends, streaming.

Imports neither torch nor anything from train/ or export/: it must install and run on a
Raspberry Pi or Jetson with only ``pip install stethoedge[runtime]``.
"""
