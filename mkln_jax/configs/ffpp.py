"""FaceForensics++ (c23, the four classic methods, NeuralTextures held out by default), the
field's protocol: 32 frames per video, 256x256 crops with margin 1.3.

Batches and learning rates are those of a 16-device run (train.reference_devices = 16): global
batches of 128 (teacher) and 256 (student), 8 and 16 images per device, Adam at 2e-4. On D
devices `mkln train` scales both by D / 16 (config_lib.for_devices, the linear scaling rule): a
v5e-64 slice trains the teacher at batch 512 and 8e-4, one 8-GPU host at batch 64 and 1e-4.

    mkln prepare ffpp --config=configs/ffpp.py --config.data.root=/data/FaceForensics++
    mkln train --config=configs/ffpp.py --config.data.root=/data/FaceForensics++ --workdir=runs/ff
"""

from mkln_jax.configs import default


def get_config():
    config = default.get_config()
    config.data.name = "ffpp"
    config.data.compression = "c23"
    config.data.methods = ("Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures")
    config.data.train_methods = ("Deepfakes", "Face2Face", "FaceSwap")
    config.data.image_size = 256
    config.data.num_frames = 32
    # dlib's HOG detector + 68-point landmarks -> 5-point alignment: DeepfakeBench's detector,
    # 4.8x faster here than its pipeline at a higher detection rate (docs/datasets.md). Needs
    # the `faces` extra (dlib-bin); "haar" needs nothing.
    config.data.detector = "dlib"
    config.data.shape_predictor = "dlib68"
    # The field's pair: an EfficientNet-B4 teacher and an EfficientNet-B0 student, both from
    # timm's ImageNet weights on the Hugging Face Hub (`hub` extra). On hosts without internet,
    # fill the Hub cache once elsewhere (`hf download timm/efficientnet_b4.ra2_in1k
    # model.safetensors`, the same for B0) and point HF_HUB_CACHE at it (docs/models.md).
    # Learning rates: DeepfakeBench's for its EfficientNet-B4 detector (Adam, 2e-4).
    config.teacher.model = "efficientnet_b4"
    config.teacher.pretrained = "hf-hub:timm/efficientnet_b4.ra2_in1k"
    config.teacher.learning_rate = 2e-4
    config.student.model = "efficientnet_b0"
    config.student.pretrained = "hf-hub:timm/efficientnet_b0.ra_in1k"
    config.student.learning_rate = 2e-4
    config.teacher.steps = 10000
    config.teacher.batch_size = 128
    config.teacher.warmup_steps = 500
    config.student.steps = 20000
    config.student.batch_size = 256
    config.student.warmup_steps = 1000
    config.train.reference_devices = 16  # batch sizes and learning rates below are for 16
    config.train.eval_every = 1000
    config.train.checkpoint_every = 1000
    config.train.log_every = 100
    config.eval.batch_size = 256
    return config
