/* qcore-plugin-fp8's CPU kernels: the weight-only FP8 GEMV and dequantize of qcore's shared header
 * (qcore/fp8.h, where the layout and the decoding are described), and qcore's shared lookup header for its
 * float32 GEMV (the layers left in float, e.g. the output head), under this binary's own symbols. */
#include <qcore/fp8.h>
#include <qcore/lut4.h>

QC_FP8_EXPORTS(qcfp8)
QC_LUT4_EXPORTS(qcfp8)
