"""Every field of an mkln_jax config, documented once. Variants import this and change a few.

Override any field on the command line: `mkln train --config=configs/demo.py
--config.distill.temperature=4 --workdir=runs/t4`.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0  # model init, data order, augmentation keys
    config.cache_dir = ""  # downloads and demo sources; "" = $MKLN_CACHE or ~/.cache/mkln_jax
    config.stages = ("teacher", "student")  # `mkln train` runs these in order

    # Data: TFDS datasets (ArrayRecord), read back with grain. `name`: "mkln_demo" (built in),
    # or a real dataset prepared from its download: "ffpp", "celebdf", "folder" (a user's own
    # real/ + fake/<method>/ tree) or "deepfakebench" (its preprocessed frames + JSON).
    config.data = ml_collections.ConfigDict()
    config.data.name = "mkln_demo"
    config.data.data_dir = ""  # TFDS data dir; "" = <cache_dir>/tfds
    config.data.image_size = 96  # face crop side in pixels (what the models see)
    config.data.root = ""  # real datasets: the download's root folder
    config.data.compression = "c23"  # ffpp: raw (= c0), c23 or c40
    config.data.splits_dir = ""  # ffpp: folder of the official train/val/test.json ("" = root)
    config.data.version = "v2"  # celebdf: v1 or v2
    config.data.index_json = ""  # deepfakebench: one of its dataset JSON files
    config.data.num_frames = 32  # real datasets: frames sampled evenly per video
    config.data.detector = "haar"  # face detector: haar (built in), or dlib or retinaface
    # (5 landmarks, hence aligned crops) from the `faces` extra
    config.data.shape_predictor = ""  # dlib 68-point model file, or "dlib68" to fetch dlib's
    # (pinned, 100 MB): gives the dlib detector landmarks, hence 5-point alignment
    config.data.every_face = False  # real datasets: keep every face of a video (each stored
    # as "<video id>#face<k>", in its video's split) instead of the main one; labels stay per video
    config.data.workers = 0  # preprocessing processes; 0 = one per core
    config.data.beam = False  # prepare with Apache Beam (TFDS's Beam support) instead
    config.data.beam_options = ""  # e.g. "--runner=DataflowRunner --project=..."; "" = Direct
    config.data.clip_frames = 24  # consecutive video frames per clip (the unit of the splits)
    config.data.frames_per_clip = 12  # frames sampled evenly from each clip
    config.data.margin = 1.3  # crop side / detected face side
    config.data.methods = ("self_blend", "upsampler", "face_swap")  # fakes written by prepare
    config.data.train_methods = ("self_blend", "upsampler")  # fakes used for training; the
    # others are seen only at evaluation (generalisation to an unseen method)
    config.data.balance = True  # oversample reals to match the number of training fakes
    config.data.hflip = True  # random horizontal flip on the host
    # Host augmentations of training crops (uint8, on the grain workers), each a probability.
    config.data.resize_prob = 0.0  # down-scale by up to 2x and back
    config.data.jpeg_prob = 0.0  # re-encode as JPEG, quality 30..95
    config.data.blur_prob = 0.0  # Gaussian blur, sigma 0.3..1.5
    config.data.colour_prob = 0.0  # brightness / contrast / saturation jitter
    # Self-Blended Images on the fly: train on reals only, fakes synthesised from them
    # (Shiohara & Yamasaki, CVPR 2022); data.train_methods are then ignored for training.
    config.data.sbi = False
    config.data.read_threads = 4  # grain reader threads (per worker process, if any)
    # grain worker processes for training batches; 0 = read in the training process, -1 = auto:
    # 0 on a CPU host (its cores are the devices), half the host's cores (up to 8) beside GPUs
    # or TPUs (config_lib.read_workers).
    config.data.read_workers = -1

    # Stage 1: fine-tune the teacher from ImageNet weights (cross-entropy only).
    config.teacher = ml_collections.ConfigDict()
    config.teacher.model = "efficientnet_lite0"  # any zoo backbone (`mkln models`)
    config.teacher.stream = "rgb"  # "rgb", "frequency" (F3-Net FAD input) or "two_stream"
    config.teacher.pretrained = "imagenet"  # "" = random init
    config.teacher.steps = 200
    config.teacher.batch_size = 32  # global batch, split over all devices
    config.teacher.learning_rate = 1e-3
    config.teacher.warmup_steps = 20
    config.teacher.weight_decay = 1e-4
    config.teacher.frequency_augment = False  # the teacher sees clean images

    # Stage 2: the student learns from labels and the frozen, fine-tuned teacher.
    config.student = ml_collections.ConfigDict()
    config.student.model = "small_cnn"
    config.student.stream = "rgb"  # as teacher.stream
    config.student.pretrained = ""
    config.student.steps = 600
    config.student.batch_size = 32
    config.student.learning_rate = 2e-3
    config.student.warmup_steps = 30
    config.student.weight_decay = 1e-4
    config.student.frequency_augment = True  # student's view is frequency-augmented

    # Frequency-texture augmentation (F3-Net bands, see mkln_jax/frequency.py); traced scalars
    # except `block`. Every operation has a probability and a strength; 0 turns it off.
    config.freq_aug = ml_collections.ConfigDict()
    config.freq_aug.prob = 0.8  # chance that an image is augmented at all
    config.freq_aug.block = 0  # 0 = full-image spectrum; 8 = JPEG's 8x8 block spectra
    config.freq_aug.jitter_prob = 1.0  # band amplitude jitter: gains drawn from
    config.freq_aug.jitter = 0.5  # [1 - jitter, 1 + jitter]
    config.freq_aug.band_drop_prob = 0.25  # random band drop (middle / high band)
    config.freq_aug.drop_strength = 1.0  # fraction of a dropped band removed
    config.freq_aug.noise_prob = 0.0  # high-frequency noise injection
    config.freq_aug.noise_std = 0.02  # std of the noise on high-band DCT coefficients
    config.freq_aug.mix_prob = 0.0  # low/high-pass mixing with another same-label image
    config.freq_aug.mix_strength = 0.5  # weight of the partner's middle + high bands

    # Distillation in the student stage; numbers are traced scalars.
    config.distill = ml_collections.ConfigDict()
    # Teachers: "teacher" (this run's teacher stage), "run:<workdir>/<stage>" (another run's
    # best checkpoint) or "weights:<model>:<path>" (converted 2-class weights); () = no KD.
    config.distill.teachers = ("teacher",)
    config.distill.teacher_weights = ()  # one per teacher; () = equal
    # "view": teachers see exactly the student's augmented view ("consistent teaching", Beyer
    # et al. 2022): the best variant of our ablation (docs/results.md); "clean": the clean image.
    config.distill.teacher_input = "view"
    # Hinton KD: alpha * T^2 * KL(teachers || student) + (1 - alpha) * CE.
    config.distill.temperature = 6.0
    config.distill.alpha = 0.95
    config.distill.schedule = "constant"  # "linear" / "cosine": start -> end over the stage
    config.distill.temperature_end = -1.0  # -1 = same as temperature
    config.distill.alpha_end = -1.0  # -1 = same as alpha
    config.distill.feature_loss = ""  # "cosine" or "l2": match projected pooled features
    config.distill.feature_weight = 1.0

    # Mutual learning (Deep Mutual Learning): the student is a pair of peers, by default an RGB
    # one (student.model / student.stream) and a frequency one, trained together; each also
    # learns from the teachers. `deploy` picks what evaluation and export use.
    config.mutual = ml_collections.ConfigDict()
    config.mutual.enabled = False
    config.mutual.peer_model = "small_cnn"
    config.mutual.peer_stream = "frequency"
    config.mutual.peer_pretrained = ""
    config.mutual.weight = 1.0  # weight of each peer's KL to the other
    config.mutual.deploy = "rgb"  # "rgb" (first peer), "frequency" (second) or "ensemble"

    # A population of students trained as one program (mkln_jax/population.py): each member a
    # setting of traced fields, e.g. ("distill.temperature=1", "distill.temperature=4"), fields
    # joined by ";"; crossed with `seeds` (model seeds; () = config.seed). Every member sees the
    # same batches and views. () and () = one student, as without this group.
    config.population = ml_collections.ConfigDict()
    config.population.members = ()
    config.population.seeds = ()
    config.population.mesh = 1  # devices on the `population` mesh axis (the rest on `data`)

    config.train = ml_collections.ConfigDict()
    # "auto": bfloat16 on GPUs and TPUs, float32 on CPUs; or "float32" / "bfloat16". Parameters,
    # optimiser state and BatchNorm statistics stay float32 either way.
    config.train.compute_dtype = "auto"
    config.train.log_every = 25
    config.train.eval_every = 100  # validation (and a checkpoint, ranked for `best`)
    config.train.checkpoint_every = 100  # checkpoint for resuming
    config.train.keep_checkpoints = 2  # latest checkpoints kept for resume
    config.train.profile_steps = 0  # > 0: a jax.profiler trace of that many steps (after 2
    # warm-up steps) into <stage>/profile, for TensorBoard's profile tab or Perfetto
    config.train.grad_accum_steps = 1  # batches averaged per optimizer update (steps count
    # batches; schedules count updates)
    config.train.mesh_data = -1  # devices on the `data` axis; -1 = all (after fsdp)
    config.train.mesh_fsdp = 1  # devices on the `fsdp` axis (parameter sharding)
    config.train.fsdp_min_size = 16384  # leaves with fewer elements stay replicated
    # Batch sizes and learning rates are global. With reference_devices = N > 0 they are those
    # of an N-device run, and on D devices both are scaled by D / N (config_lib.for_devices:
    # the linear scaling rule of Goyal et al. 2017, with the configured warmup), so the batch
    # per device and the step per example stay the same as the pod grows.
    config.train.reference_devices = 0
    # XLA:CPU only (ignored on GPU and TPU): the train step's libraries (backends/cpu/).
    config.train.cpu = ml_collections.ConfigDict()
    # Convolutions: "auto" (the model's own choice, Eigen for ResNets), "ynnpack" or "eigen".
    config.train.cpu.convolutions = "auto"
    # Matrix products: "auto" (Eigen for Xception, else YNNPACK), "ynnpack" or "eigen".
    config.train.cpu.dots = "auto"

    config.eval = ml_collections.ConfigDict()
    config.eval.split = "test"
    config.eval.batch_size = 64
    config.eval.threshold = 0.5  # decision threshold for ACC and verdicts
    # "weights:<model>:<path>": evaluate a detector from weights alone (e.g. a DeepfakeBench
    # checkpoint, docs/models.md) instead of this run's stages; --workdir receives the report.
    config.eval.weights = ""
    config.eval.bootstrap = 1000  # resamples (of videos) for 95% AUC intervals; 0 = off
    # Also log the test AUC at every validation, for a separate, clearly labelled
    # DeepfakeBench-compatible number (mean of the top-3 test AUCs: checkpoints picked on the
    # test set, as its published tables do). Our headline numbers never use it.
    config.eval.deepfakebench_report = False
    # `mkln evaluate --protocol=robustness`: each at every severity of mkln_jax/perturb.py.
    config.eval.perturbations = (
        "gaussian_noise",
        "gaussian_blur",
        "jpeg",
        "downscale",
        "brightness",
        "contrast",
    )

    config.predict = ml_collections.ConfigDict()
    config.predict.num_frames = 16  # frames sampled evenly from a video
    config.predict.aggregate = "mean"  # video score: "mean", "max" or "confident" (DFDC winner)

    # What `mkln export` fits on the validation split and stores in the artifact (predict
    # applies both): temperature scaling of the logits, and the verdict threshold: "eer" (the
    # EER point), "fpr:<rate>" (the lowest threshold with at most that false-positive rate) or
    # "fixed" (eval.threshold).
    config.export = ml_collections.ConfigDict()
    config.export.calibrate = True
    config.export.threshold = "eer"

    # Experiment tracking beside the run's own logs (mkln_jax/tracking.py; the `track` extra):
    # "wandb" and / or "mlflow"; () = off.
    config.track = ml_collections.ConfigDict()
    config.track.backends = ()
    config.track.project = "mkln_jax"  # W&B project / MLflow experiment
    config.track.wandb_mode = ""  # "" = W&B's default (WANDB_MODE); "offline" for `wandb sync`
    config.track.mlflow_uri = ""  # "" = MLFLOW_TRACKING_URI or MLflow's default
    return config
