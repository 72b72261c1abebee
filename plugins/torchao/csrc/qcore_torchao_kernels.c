/* qcore-plugin-torchao's CPU kernels: the int8 GEMV for torchao's int8 weight-only weights and
 * the shared lookup GEMV for its int4 weights (code 0..15, zero term subtracted by the caller,
 * qcore/int4.py). Built at install by setup.py against qcore's headers; loaded with ctypes by
 * qcore_torchao/ops.py, which checks every argument before calling. */
#include <qcore/lut4.h>

QC_LUT4_EXPORTS(qctorchao)
