"""The PyTorch side of bench/torch_compare.py. Runs in a Python with torch, torchvision and timm
(`make parity` builds one: .venv-torch), never in the project's environment.

Reads one JSON request per line on stdin: {"case": name, "batch": B, "size": S, "steps": n,
"mode": "eager" | "compile"} and optionally "device" ("cpu" | "cuda"), "precision" ("fp32":
float32 with TF32 tensor cores on GPUs, as jax's default precision; "bf16": autocast),
"channels_last" (bool), "teacher" (the distillation teacher, default resnet18) and
"teacher_input" ("clean", default, or "view": consistent teaching); answers one
JSON line: {"seconds": [per-step times]}. Models are built once per request kind and kept, so the
driver can interleave short blocks with JAX's. The step is the same as ours: NHWC uint8 batch ->
[0, 1] -> normalise, forward, cross-entropy (+ for "distill": frozen teacher, full-image DCT band
augmentation and Hinton KD), backward, SGD with momentum 0.9. bench/torch_compare.py (CPU) and
bench/gpu_check.py (GPU) drive it.
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
    "resnet50": lambda: torchvision.models.resnet50(num_classes=2),
    "efficientnet_b0": lambda: timm.create_model("efficientnet_b0", num_classes=2),
    "efficientnet_b4": lambda: timm.create_model("efficientnet_b4", num_classes=2),
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
    def __init__(self, request: dict):
        torch.manual_seed(0)
        case, size = request["case"], request["size"]
        self.device = torch.device(request.get("device", "cpu"))
        self.bf16 = request.get("precision", "fp32") == "bf16"
        layout = torch.channels_last if request.get("channels_last") else torch.contiguous_format
        self.layout = layout
        self.distill = case == "distill"
        self.teacher_sees_view = request.get("teacher_input", "clean") == "view"
        self.model = MODELS["efficientnet_b0" if self.distill else case]()
        self.model = self.model.to(self.device, memory_format=layout).train()
        self.teacher = None
        if self.distill:
            self.teacher = MODELS[request.get("teacher", "resnet18")]()
            self.teacher = self.teacher.to(self.device, memory_format=layout).eval()
            for p in self.teacher.parameters():
                p.requires_grad_(False)
            self.d = dct_matrix(size).to(self.device)
        self.mean, self.std = MEAN.to(self.device), STD.to(self.device)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)
        self.forward = torch.compile(self.model) if request["mode"] == "compile" else self.model
        self.generator = torch.Generator().manual_seed(0)
        self.warm = False

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        x = images.permute(0, 3, 1, 2).float() / 255.0
        autocast = torch.autocast(self.device.type, torch.bfloat16, enabled=self.bf16)
        if self.distill:
            with torch.no_grad():
                # DCT and KD in float32, as in our step
                spectrum = self.d @ x @ self.d.T
                gain = band_gain(x.shape[-1], x.shape[0], self.generator).to(self.device)
                view = (self.d.T @ (spectrum * gain) @ self.d).clamp(0, 1)
                seen = view if self.teacher_sees_view else x  # "view": consistent teaching
                with autocast:
                    teacher_input = ((seen - self.mean) / self.std).contiguous(
                        memory_format=self.layout
                    )
                    teacher_logits = self.teacher(teacher_input).float()
            x = view
        with autocast:
            logits = self.forward(
                ((x - self.mean) / self.std).contiguous(memory_format=self.layout)
            ).float()
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
    torch.backends.cuda.matmul.allow_tf32 = True  # jax's default float32 precision on GPUs
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    steps_cache = {}
    for line in sys.stdin:
        request = json.loads(line)
        key = json.dumps({k: v for k, v in request.items() if k not in ("steps", "batch")})
        if key not in steps_cache:
            steps_cache[key] = Step(request)
        step = steps_cache[key]
        batch, size = request["batch"], request["size"]
        images = torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8)
        images = images.to(step.device)
        labels = (torch.arange(batch) % 2).to(step.device)
        sync = torch.cuda.synchronize if step.device.type == "cuda" else (lambda: None)
        if not step.warm:  # warm-up (and compilation), as many steps as the JAX side gets
            for _ in range(request.get("warmup", 15)):
                step(images, labels)
            sync()
            step.warm = True
        times = []
        for _ in range(request["steps"]):
            start = time.perf_counter()
            step(images, labels)
            sync()
            times.append(time.perf_counter() - start)
        if step.device.type == "cuda":  # hand the cached blocks back: JAX shares the device
            torch.cuda.empty_cache()
        print(json.dumps({"seconds": times, "torch": torch.__version__}), flush=True)


if __name__ == "__main__":
    main()
