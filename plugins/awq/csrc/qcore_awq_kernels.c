/* qcore-plugin-awq's CPU kernels: AWQ's int4 s*(q - z) as the shared lookup GEMV/dequantize with
 * code 0..15 (the zero point is subtracted by the caller, qcore/int4.py), plus the int8 GEMV the
 * shared op set includes. Built at install by setup.py against qcore's headers; loaded with ctypes
 * by qcore_awq/ops.py, which checks every argument before calling. */
#include <qcore/lut4.h>

QC_LUT4_EXPORTS(qcawq)
