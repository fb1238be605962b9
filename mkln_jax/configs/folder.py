"""A user's own data: <root>/real/... and <root>/fake/<method>/... (videos or images), optionally
under train/ val/ test/. Set data.methods / data.train_methods to your method folder names.

    mkln prepare folder --config=configs/folder.py --config.data.root=/data/mine \\
        --config.data.methods="('deepfacelab',)" --config.data.train_methods="('deepfacelab',)"
"""

from mkln_jax.configs import ffpp


def get_config():
    config = ffpp.get_config()
    config.data.name = "folder"
    config.data.methods = ("fake",)
    config.data.train_methods = ("fake",)
    return config
