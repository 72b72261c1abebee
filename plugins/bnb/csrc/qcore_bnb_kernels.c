/* qcore-plugin-bnb's CPU kernels: NF4/FP4 lookup GEMV and dequantize (bitsandbytes' layout is
 * qcore's lut4 layout). Built at install by setup.py against qcore's headers; loaded with ctypes
 * by qcore_bnb/ops.py, which checks every argument before calling. */
#include <qcore/lut4.h>

QC_LUT4_EXPORTS(qcbnb)
