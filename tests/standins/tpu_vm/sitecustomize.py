"""On a stand-in Cloud TPU VM: jax's scan of the PCI bus finds four TPU v4 chips. That scan is
the only thing faked here; what jax then asks the VM's metadata server is answered by the
stand-in `gcloud` (tests/standins/gcloud), and everything after that is jax's own code."""

import importlib.abc
import importlib.machinery
import sys

CHIPS = 4


class _FakeTpuChips(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "jax._src.hardware_utils":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            module.num_available_tpu_chips_and_device_id = lambda: (CHIPS, module.TpuVersion.v4)

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, _FakeTpuChips())
