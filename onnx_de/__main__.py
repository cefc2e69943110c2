"""``python -m onnx_de`` runs the ``onnx-de`` command."""

import sys

from .cli import main

sys.exit(main())
