"""The demo config shrunk for tests: small crops, few steps. Same code path as the demo."""

from mkln_jax.configs import default


def get_config():
    config = default.get_config()
    config.data.image_size = 32
    config.data.clip_frames = 40
    config.data.frames_per_clip = 3
    config.teacher.steps = 4
    config.teacher.batch_size = 8
    config.student.steps = 6
    config.student.batch_size = 8
    config.train.log_every = 2
    config.train.eval_every = 3
    config.eval.batch_size = 16
    config.predict.num_frames = 4
    return config
