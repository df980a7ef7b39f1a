/* Types shared by the C kernels and the Cython driver (_cython_ext.pyx). */
#ifndef FX_COMMON_H
#define FX_COMMON_H

#include <stddef.h>
#include <stdint.h>

typedef ptrdiff_t fx_ssize; /* Py_ssize_t: N x C passes 2^31 */

/* dtype codes (the Cython side maps NumPy type numbers onto these; FX_BF16 is
 * ml_dtypes' bfloat16) */
enum {
    FX_BOOL = 1, FX_I8, FX_U8, FX_I16, FX_U16, FX_I32, FX_U32, FX_I64, FX_U64,
    FX_F16, FX_F32, FX_F64, FX_BF16
};

/* An (O, C, I) array: base pointer and byte strides (any sign, zero allowed). */
typedef struct {
    char *data;
    fx_ssize so, sc, si;
    int dtype;
} fx_arr3;

/* Everything a kernel needs for one call; built once per call by the driver. */
typedef struct {
    fx_ssize n_o, n_c, n_i;    /* O, C, I ("I" is a macro in complex.h) */
    fx_arr3 x;                 /* y_pred */
    fx_arr3 t;                 /* dense targets (categorical, binary) */
    fx_arr3 g;                 /* grad_out; g.data == NULL: loss only. float32 (or
                                * bfloat16, for bfloat16 x) or float64 */
    int dense;                 /* 1: targets t; 0: sparse labels */
    const char *gw;            /* grad_weight (O, I) float64 */
    fx_ssize gw_so, gw_si;
    double *loss;              /* per-row losses: row r = o*I + i at loss[r - loss_r0] */
    fx_ssize loss_r0;          /* first row loss holds (0, or a block's first row) */
    const double *cw;          /* class_weight (C,) contiguous */
    int cw_uniform;            /* every class weight equals cw0 */
    double cw0, cw_sum;
    const char *pw;            /* pos_weight (C, I) float64 */
    fx_ssize pw_sc, pw_si;
    int pw_const;              /* both strides 0: pw0 everywhere */
    double pw0;
    double ls, eps;
    double ls_per_c;           /* ls / C */
    int stream_loss;           /* loss_out is large: write it with non-temporal stores */
    int leaf_sums;             /* binary column kernels, C = 1, rows in whole leaves: loss
                                * receives the sum of each FX_LEAF rows, not their losses */
    /* sparse labels, read by the column kernels (the row driver passes y) */
    const char *lab;
    fx_ssize lab_so, lab_si;
    int lab_dtype;
    int64_t ignore;
    /* sparse_from_logits' optional terms and outputs, read only by the logits_x
     * kernels (KERNELS.md): z_loss * lse^2 added to a row's loss (0: off), logits
     * taken as softcap * tanh(x / softcap) (0: off), each row's logsumexp (float64)
     * and label rank (int64) written to (O, I) arrays at byte strides (NULL: not
     * asked for) */
    double z_loss, softcap;
    char *lse;
    fx_ssize lse_so, lse_si;
    char *rank;
    fx_ssize rank_so, rank_si;
} fx_call;

/* Row kernel: row (o, i); y is the label (sparse; -1 when ignored), else 0.
 * Returns 1 when the row holds a probability (or a binary target) outside
 * [0, 1], else 0. */
typedef int (*fx_row_fn)(const fx_call *k, fx_ssize o, fx_ssize i, fx_ssize y);
/* Column kernel: rows (o, i0 .. i0+n-1) with a contiguous inner axis (n <= FX_LANES),
 * gradient of any layout. Returns the first i holding a probability (or a binary
 * target) outside [0, 1], or -1. */
typedef fx_ssize (*fx_cols_fn)(const fx_call *k, fx_ssize o, fx_ssize i0, fx_ssize n);
/* Range kernel: flat rows r0 .. r1-1 (the sparse gather-log).
 * Returns the first row holding a probability outside [0, 1], or -1. */
typedef fx_ssize (*fx_range_fn)(const fx_call *k, fx_ssize r0, fx_ssize r1);

#define FX_LANES 256  /* most rows one column task handles */
#define FX_TILE 4096  /* elements of a column task's copied tile (classes x lanes) */
#define FX_BLOCK 2048 /* elements of a row handled per block (row kernels) */
#define FX_SHORT_C 128 /* rows of at most this many classes: the short-row softmax kernels */
#define FX_LEAF 128   /* the leaves of NumPy's pairwise sum (its PW_BLOCKSIZE) */

/* Index 0: float32 compute (float16/float32 input), 1: float64. */
typedef struct {
    const char *name;
    fx_row_fn logits_row[2];
    fx_cols_fn logits_cols[2];
    fx_row_fn logits_x_row[2];   /* sparse_from_logits with z_loss, softcap, lse or rank */
    fx_cols_fn logits_x_cols[2];
    fx_row_fn logits_bf16_row;   /* logits_row, logits_x_row for bfloat16 at a class */
    fx_row_fn logits_x_bf16_row; /* stride of 2 bytes (float32 compute) */
    fx_range_fn logits_short[2]; /* logits_row over a range of rows of at most FX_SHORT_C classes */
    fx_row_fn probs_row[2];
    fx_cols_fn probs_cols[2];
    fx_row_fn bce_logits_row[2];
    fx_cols_fn bce_logits_cols[2];
    fx_row_fn bce_probs_row[2];
    fx_cols_fn bce_probs_cols[2];
    fx_range_fn gather[2];
    /* test hooks: the vector exp/log of this ISA over an array */
    /* kind 0: the full-range exp; 1: x <= 0 (fx_exp_neg); 2: x in [FX_EXP_NEAR, 0] (fx_exp_near) */
    void (*vexp_f32)(const float *x, float *y, fx_ssize n, int kind);
    void (*vexp_f64)(const double *x, double *y, fx_ssize n, int kind);
    void (*vlog_f32)(const float *x, float *y, fx_ssize n);
    void (*vlog_f64)(const double *x, double *y, fx_ssize n);
    /* the read pass the benchmark compares against: sum of float32 as float64 */
    double (*read_sum_f32)(const float *x, fx_ssize n);
    /* NumPy's pairwise sum of float64 (the block sums of the per-row losses) */
    double (*pairwise_sum_f64)(const double *a, fx_ssize n);
} fx_table;

/* fx_dispatch.c */
const fx_table *fx_active(void);
int fx_select(const char *name); /* "default", "avx2", "avx512" or "auto"; 0 on success */
const char *fx_compiled_isas(void);
int fx_cpu_has(const char *name);
void fx_fork_guard_install(void);
int fx_in_forked_child(void);
void fx_note_parallel_use(void);

#endif
