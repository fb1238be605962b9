"""Celeb-DF v2 with the official test list, same protocol as configs/ffpp.py. Also the usual
cross-dataset target: evaluate an FF++ run on it with --config=configs/celebdf.py.

    mkln prepare celebdf --config=configs/celebdf.py --config.data.root=/data/Celeb-DF-v2
"""

from mkln_jax.configs import ffpp


def get_config():
    config = ffpp.get_config()
    config.data.name = "celebdf"
    config.data.version = "v2"
    config.data.methods = ("Celeb-synthesis",)
    config.data.train_methods = ("Celeb-synthesis",)
    return config
