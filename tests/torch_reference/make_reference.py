"""Reference outputs from the published PyTorch definitions, for the parity tests.

Run with a Python that has torch, torchvision and timm (not this project's environment):
    python tests/torch_reference/make_reference.py OUT_DIR [NAME ...]
For each architecture it writes OUT_DIR/<name>.pth (random weights and random BatchNorm
statistics, torch's zip format; `.safetensors` for the timm_* entries, as the Hub serves them),
<name>_input.npy (NHWC float32) and <name>_logits.npy (eval mode).
"""

import pathlib
import sys

import numpy as np
import safetensors.torch
import timm
import torch
import torchvision

ARCHITECTURES = {
    "resnet18": lambda: torchvision.models.resnet18(),
    "resnet34": lambda: torchvision.models.resnet34(),
    "resnet50": lambda: torchvision.models.resnet50(),
    "mobilenet_v2": lambda: torchvision.models.mobilenet_v2(),
    **{
        f"efficientnet_b{i}": (lambda i=i: timm.create_model(f"efficientnet_b{i}"))
        for i in range(5)
    },
    "xception": lambda: timm.create_model("legacy_xception"),
    # timm's own names for the zoo models whose reference is another library (the Hub's weights)
    "timm_mobilenetv2_100": lambda: timm.create_model("mobilenetv2_100"),
    "timm_tf_efficientnet_lite0": lambda: timm.create_model("tf_efficientnet_lite0"),
    "timm_resnet50": lambda: timm.create_model("resnet50"),
}
SAFETENSORS = ("timm_",)  # written as .safetensors, as the Hub serves them
INPUT_SIZE = {"xception": 96}  # unpadded entry convolutions need a larger input


def main() -> None:
    out = pathlib.Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    names = sys.argv[2:] or list(ARCHITECTURES)
    for name in names:
        torch.manual_seed(0)
        model = ARCHITECTURES[name]().eval()
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, torch.nn.BatchNorm2d):
                    module.running_mean.uniform_(-0.2, 0.2)
                    module.running_var.uniform_(0.5, 1.5)
                    module.weight.uniform_(0.5, 1.5)
                    module.bias.uniform_(-0.2, 0.2)
            size = INPUT_SIZE.get(name, 64)
            images = torch.randn(2, 3, size, size)
            logits = model(images).numpy()
        if name.startswith(SAFETENSORS):
            state = {k: v.contiguous() for k, v in model.state_dict().items()}
            safetensors.torch.save_file(state, str(out / f"{name}.safetensors"))
        else:
            torch.save(model.state_dict(), out / f"{name}.pth")
        np.save(out / f"{name}_input.npy", images.numpy().transpose(0, 2, 3, 1))
        np.save(out / f"{name}_logits.npy", logits)
        print(f"{name}: logits max |{np.abs(logits).max():.3g}|", flush=True)


if __name__ == "__main__":
    main()
