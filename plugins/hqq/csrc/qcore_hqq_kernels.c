/* qcore-plugin-hqq's CPU kernels: HQQ 4-bit (q - z) * s with a float zero as the shared lookup
 * GEMV/dequantize with code 0..15 (s*z*sum(x) per group subtracted by the caller, qcore/int4.py),
 * and the int8 GEMV for 8-bit layers. Built at install by setup.py against qcore's headers; loaded
 * with ctypes by qcore_hqq/ops.py, which checks every argument before calling. */
#include <qcore/lut4.h>

QC_LUT4_EXPORTS(qchqq)
