"""The public surface: every module declares __all__ and every exported name exists."""

import importlib
import pkgutil

import onnx_de


def test_every_module_declares_all_and_its_names_exist():
    for info in pkgutil.walk_packages(onnx_de.__path__, "onnx_de."):
        if info.name in ("onnx_de.__main__", "onnx_de.models"):
            continue
        module = importlib.import_module(info.name)
        assert hasattr(module, "__all__"), f"{info.name} has no __all__"
        for name in module.__all__:
            assert hasattr(module, name), f"{info.name}.__all__ names missing {name}"


def test_package_exports_resolve_and_errors_share_one_root():
    for name in onnx_de.__all__:
        assert hasattr(onnx_de, name)
    for error in (onnx_de.ModelError, onnx_de.DataError, onnx_de.ZooError, onnx_de.ConfigError):
        assert issubclass(error, onnx_de.OnnxDeError)
