/* qcore-plugin-gptq's CPU kernels: the int4 GEMV/dequantize (GPTQ's s*(q - z) as the lookup
 * kernel with code 0..15, the zero point subtracted by the caller) and the int8 GEMV. Built at
 * install by setup.py against qcore's headers; loaded with ctypes by qcore_gptq/ops.py, which
 * checks every argument before calling. */
#include <qcore/lut4.h>

QC_LUT4_EXPORTS(qcgptq)
