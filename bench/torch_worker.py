"""The PyTorch side of bench/torch_compare.py. Runs in a Python with torch, torchvision and timm
(`make parity` builds one: .venv-torch), never in the project's environment.

Reads one JSON request per line on stdin: {"case": name, "batch": B, "size": S, "steps": n,
"mode": "eager" | "compile"}; answers one JSON line: {"seconds": [per-step times]}. Models are
built once per (case, mode) and kept, so the driver can interleave short blocks with JAX's.
The step is the same as ours: float32, NHWC uint8 batch -> [0, 1] -> normalise, forward,
cross-entropy (+ for "distill": frozen teacher, full-image DCT band augmentation and Hinton KD),
backward, SGD with momentum 0.9.
"""

import json
import math
import sys
import time

import timm
import torch
import torch.nn.functional as F
import torchvision

MODELS = {
    "resnet18": lambda: torchvision.models.resnet18(num_classes=2),
    "efficientnet_b0": lambda: timm.create_model("efficientnet_b0", num_classes=2),
    "xception": lambda: timm.create_model("legacy_xception", num_classes=2),
}
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def dct_matrix(n: int) -> torch.Tensor:
    k = torch.arange(n, dtype=torch.float64)
    m = torch.cos(math.pi * (k[None, :] + 0.5) * k[:, None] / n) * math.sqrt(2.0 / n)
    m[0] /= math.sqrt(2.0)
    return m.float()


def band_gain(size: int, batch: int, generator: torch.Generator) -> torch.Tensor:
    i = torch.arange(size)
    s = i[:, None] + i[None, :]
    masks = torch.stack([s <= size / 2.82, (s > size / 2.82) & (s <= size / 2), s > size / 2])
    gains = 1 + 0.5 * (2 * torch.rand(batch, 3, generator=generator) - 1)
    return torch.einsum("bk,khw->bhw", gains, masks.float())[:, None]


class Step:
    def __init__(self, case: str, size: int, mode: str):
        torch.manual_seed(0)
        self.distill = case == "distill"
        self.model = MODELS["efficientnet_b0" if self.distill else case]()
        self.model.train()
        self.teacher = None
        if self.distill:
            self.teacher = MODELS["resnet18"]().eval()
            for p in self.teacher.parameters():
                p.requires_grad_(False)
            self.d = dct_matrix(size)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)
        self.forward = torch.compile(self.model) if mode == "compile" else self.model
        self.generator = torch.Generator().manual_seed(0)
        self.warm = False

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        x = images.permute(0, 3, 1, 2).float() / 255.0
        if self.distill:
            with torch.no_grad():
                teacher_logits = self.teacher((x - MEAN) / STD)
                spectrum = self.d @ x @ self.d.T
                gain = band_gain(x.shape[-1], x.shape[0], self.generator)
                x = (self.d.T @ (spectrum * gain) @ self.d).clamp(0, 1)
        logits = self.forward((x - MEAN) / STD)
        loss = F.cross_entropy(logits, labels)
        if self.distill:
            t = 6.0
            kd = (
                F.kl_div(
                    F.log_softmax(logits / t, -1),
                    F.log_softmax(teacher_logits / t, -1),
                    reduction="batchmean",
                    log_target=True,
                )
                * t
                * t
            )
            loss = 0.05 * loss + 0.95 * kd
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()


def main() -> None:
    torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else torch.get_num_threads())
    steps_cache = {}
    for line in sys.stdin:
        request = json.loads(line)
        key = (request["case"], request["size"], request["mode"])
        if key not in steps_cache:
            steps_cache[key] = Step(request["case"], request["size"], request["mode"])
        step = steps_cache[key]
        batch, size = request["batch"], request["size"]
        images = torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8)
        labels = torch.arange(batch) % 2
        if not step.warm:  # warm-up (and compilation), as many steps as the JAX side gets
            for _ in range(15):
                step(images, labels)
            step.warm = True
        times = []
        for _ in range(request["steps"]):
            start = time.perf_counter()
            step(images, labels)
            times.append(time.perf_counter() - start)
        print(json.dumps({"seconds": times, "torch": torch.__version__}), flush=True)


if __name__ == "__main__":
    main()
