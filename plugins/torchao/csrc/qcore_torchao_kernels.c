/* qcore-plugin-torchao's CPU kernels: the int8 GEMV for torchao's int8 weights, the shared lookup GEMV for
 * its int4 weights (code 0..15, zero term in the kernel, qcore/int4.py), the float32 GEMV for the layers
 * left in float, and the FP8 GEMV for its float8_e4m3fn weights (qcore/fp8.h). Built at install by setup.py
 * against qcore's headers; loaded with ctypes by qcore_torchao/ops.py, which checks every argument
 * (qcore.lut4, qcore.fp8) before calling. */
#include <qcore/fp8.h>
#include <qcore/lut4.h>

QC_LUT4_EXPORTS(qctorchao)
QC_FP8_EXPORTS(qctorchao)
