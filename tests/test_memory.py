"""Peak memory while loading: the quantized model plus about one float tensor, never the float model.

Measured in a fresh subprocess (VmHWM from /proc, relative to the RSS just before loading).
"""

import json
import sys

import pytest
from core_helpers import run_python

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status (Linux)")

LAYERS, WIDTH = 24, 2048  # 24 x 2048x2048 float32 = 403 MB of float weights; int8: 101 MB

CODE = f"""
import json, torch
from torch import nn
from safetensors.torch import save_file
import qcore

def rss(field):
    for line in open('/proc/self/status'):
        if line.startswith(field):
            return int(line.split()[1]) * 1024

def factory():
    return nn.Sequential(*[nn.Linear({WIDTH}, {WIDTH}, bias=False) for _ in range({LAYERS})])

path = r"{{path}}"
for i in range({LAYERS}):  # written shard by shard, never all in memory
    save_file({{f"{{i}}.weight": torch.randn({WIDTH}, {WIDTH})}}, f"{{path}}/model-{{i:05d}}.safetensors")
cfg = qcore.config("example_int8", modules_to_not_convert=[])
# a tiny load first: the imports it triggers (accelerate, the plugin; compiled from source when
# no bytecode cache is written, as in tox) are not what this test measures
import os
os.makedirs(path + "/warm-up")
save_file({{"0.weight": torch.randn(64, 64)}}, path + "/warm-up/model.safetensors")
qcore.load_quantized(path + "/warm-up", cfg, model=lambda: nn.Sequential(nn.Linear(64, 64, bias=False)), progress=False)
import ctypes
ctypes.CDLL(None).malloc_trim(0)  # the shards' buffers freed above go back to the OS, not into the baseline
baseline = rss("VmRSS")
open("/proc/self/clear_refs", "w").write("5")  # reset VmHWM to the current RSS
model = qcore.load_quantized(path, cfg, model=factory, progress=False)
print(json.dumps({{"peak": rss("VmHWM") - baseline, "modules": len(model.qcore_modules)}}))
"""


def test_on_the_fly_load_never_holds_the_float_model(tmp_path):
    result = run_python(CODE.replace("{path}", str(tmp_path)))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    float_bytes = LAYERS * WIDTH * WIDTH * 4
    int8_bytes = float_bytes // 4
    one_float_tensor = WIDTH * WIDTH * 4
    assert report["modules"] == LAYERS
    # int8 model + the float tensor being read + the example quantizer's one float temporary + slack
    assert report["peak"] < int8_bytes + 2 * one_float_tensor + 32 * 2**20, report
    assert report["peak"] < float_bytes / 2, report
    assert report["peak"] > 0.9 * int8_bytes, report  # the measurement sees at least the model it built
    print(f"peak {report['peak'] / 2**20:.0f} MiB for {float_bytes / 2**20:.0f} MiB float, {int8_bytes / 2**20:.0f} MiB int8")


ALLOCATOR_CODE = """
import ctypes, json, torch
from torch import nn
from safetensors.torch import save_file
import qcore

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2

def mmapped_bytes_of_a_fresh_allocation():
    del_first = torch.empty(3_500_000, dtype=torch.uint8); del_first.fill_(1); del del_first  # raise the dynamic threshold
    before = libc.mallinfo2().hblkhd
    t = torch.empty(3_500_000, dtype=torch.uint8); t.fill_(1)
    return libc.mallinfo2().hblkhd - before

save_file({f"{i}.weight": torch.randn(512, 512) for i in range(4)}, r"{path}/model.safetensors")
first = mmapped_bytes_of_a_fresh_allocation()
qcore.load_quantized(r"{path}", quantization_config="example-int8", model=lambda: nn.Sequential(*[nn.Linear(512, 512, bias=False) for _ in range(4)]), progress=False)
print(json.dumps({"before_load": first, "after_load": mmapped_bytes_of_a_fresh_allocation()}))
"""


def test_loading_leaves_the_host_allocator_policy_alone(tmp_path):
    """load_quantized must not pin glibc's mmap threshold (a 3.5 MB tensor would then cost an mmap + page faults)."""
    result = run_python(ALLOCATOR_CODE.replace("{path}", str(tmp_path)))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["before_load"] == 0, report  # glibc's dynamic threshold keeps it on the heap
    assert report["after_load"] == 0, report
