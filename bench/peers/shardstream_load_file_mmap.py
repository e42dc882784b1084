"""Row `python: shardstream.load_file mmap=True`: views of a private mapping of the files, made
resident by shardstream's parallel populate before load_file returns; the harness then reads a
byte of every page (touch_mapped), as for every peer that returns views. CPU only. Beside
`safetensors load_file + touch`. See _common.py for the protocol."""
import _common


def load(checkpoint, files, device):
    import shardstream
    return list(shardstream.load_file(checkpoint, device=device, mmap=True).values())


_common.main("python: shardstream.load_file mmap=True", "shardstream", load,
             cpu_only=True)
