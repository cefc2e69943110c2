"""The onnx-de model zoo: ``zoo.json`` (the manifest), the models trained here, and the MNIST split.

Installed as the package ``onnx_de.models``; read it through :mod:`onnx_de.zoo`.
"""
