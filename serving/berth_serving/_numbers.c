/* Lines of comma-separated decimal numbers, parsed straight into a row-major float matrix.
 *
 * The batch transform's hot loop: Apache Arrow's CSV reader spends about as much CPU on a row
 * of 256 numbers as the model does on it, so on 2 cores the parser, not the model, set the
 * pace. This parser takes the plain case only and refuses everything else, so that the caller
 * falls back to Arrow (and Arrow to the line by line path that names the bad records):
 *
 *   line    := number ("," number)*            or, bracketed (JSON arrays): "[" the same "]"
 *   number  := [+-]? digits? ("." digits?)? ([eE] [+-]? digits)?   with at least one digit
 *
 * Lines end in "\n" or "\r\n"; empty lines are skipped (as Arrow's ignore_empty_lines). Every
 * line must have `columns` numbers. A number is converted only where the result is exact
 * without big-number arithmetic (Clinger's fast path: at most 19 significant digits whose
 * value is below 2^53, and a power of ten of at most 22): the double is then the correctly
 * rounded one, the same double Arrow's parser gives, cast to float32 as the caller's cast
 * does. Any other number (more digits, larger exponents, nan, inf, spaces, quotes) refuses
 * the whole block. The GIL is released while parsing.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

static const double POWERS[] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
                                1e8,  1e9,  1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
                                1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};
#define MAX_EXACT (((uint64_t)1) << 53)

static inline int is_digit(char c) { return (unsigned char)(c - '0') < 10; }

/* The mantissa of digits [p, end) skipping a '.', where they hold at most 19 significant
 * digits; 0 and *ok = 0 where they hold more. Only for numbers of over 19 digits. */
static uint64_t significant_mantissa(const char *p, const char *end, int *ok) {
    uint64_t mantissa = 0;
    int significant = 0;
    for (; p < end; p++) {
        if (*p == '.') continue;
        if (mantissa || *p != '0') {
            if (++significant > 19) {
                *ok = 0;
                return 0;
            }
            mantissa = mantissa * 10 + (uint64_t)(*p - '0');
        }
    }
    *ok = 1;
    return mantissa;
}

/* One number at p; its value in *out. Answers the byte after it, or NULL where it refuses.
 * The text ends in a byte that is no part of a number (the bytes object's NUL terminator at
 * the latest), so the scan needs no bounds: it stops at the line's end. `strict` (a constant
 * at each call, so the checks vanish where it is 0): JSON's grammar only, no "+1", ".5", "1."
 * or "01", and not the integer "-0" (JSON decoders read it as 0, not as -0.0). */
static inline const char *parse_number(const char *p, double *out, int strict) {
    int negative = *p == '-';
    if (strict && *p == '+') return NULL;
    p += negative | (*p == '+'); /* no branch: signs come at random */
    const char *first = p;
    uint64_t mantissa = 0; /* wraps past 19 digits: recomputed then */
    while (is_digit(*p)) mantissa = mantissa * 10 + (uint64_t)(*p++ - '0');
    int digits = (int)(p - first);
    if (strict && (digits == 0 || (digits > 1 && *first == '0'))) return NULL;
    int scale = 0, integral = 1;
    if (*p == '.') {
        const char *fraction = ++p;
        while (is_digit(*p)) mantissa = mantissa * 10 + (uint64_t)(*p++ - '0');
        if (strict && p == fraction) return NULL;
        scale = -(int)(p - fraction);
        digits -= scale;
        integral = 0;
    }
    if (!digits) return NULL;
    if (digits > 19) {
        int ok;
        mantissa = significant_mantissa(first, p, &ok);
        if (!ok) return NULL;
    }
    if (*p == 'e' || *p == 'E') {
        p++;
        int exponent_negative = *p == '-';
        if (exponent_negative || *p == '+') p++;
        const char *exponent_first = p;
        int exponent = 0;
        while (is_digit(*p)) {
            if (exponent < 10000) exponent = exponent * 10 + (*p - '0');
            p++;
        }
        if (p == exponent_first) return NULL;
        scale += exponent_negative ? -exponent : exponent;
        integral = 0;
    }
    if (strict && integral && negative && mantissa == 0) return NULL;
    if (mantissa > MAX_EXACT) return NULL;
    double value = (double)mantissa;
    if (mantissa == 0) {
        /* 0 whatever the power of ten */
    } else if (scale < 0) {
        if (scale < -22) return NULL;
        value /= POWERS[-scale];
    } else if (scale > 0) {
        if (scale > 22) return NULL;
        value *= POWERS[scale];
    }
    *out = negative ? -value : value;
    return p;
}

/* The next line of [*p, end) that is not empty: its text in [*line, *line_end) (a JSON array's
 * brackets taken off), *p moved past it. 1: a line; 0: none left; -1: brackets missing. */
static inline int next_line(const char **p, const char *end, int bracketed, const char **line,
                            const char **line_end) {
    while (*p < end) {
        const char *start = *p;
        const char *newline = memchr(start, '\n', (size_t)(end - start));
        const char *stop = newline ? newline : end;
        *p = newline ? newline + 1 : end;
        if (stop > start && stop[-1] == '\r') stop--;
        if (stop == start) continue; /* an empty line */
        if (bracketed) {
            if (*start != '[' || stop[-1] != ']' || stop - start < 2) return -1;
            start++;
            stop--;
        }
        *line = start;
        *line_end = stop;
        return 1;
    }
    return 0;
}

/* Rows parsed into out (capacity rows of `columns`), or -1: the block is refused. */
static Py_ssize_t parse_block(const char *p, const char *end, Py_ssize_t columns, int bracketed,
                              int wide, void *out, Py_ssize_t capacity) {
    float *narrow_out = (float *)out;
    double *wide_out = (double *)out;
    Py_ssize_t rows = 0;
    const char *q, *line_end;
    int found;
    while ((found = next_line(&p, end, bracketed, &q, &line_end)) > 0) {
        if (rows >= capacity) return -1;
        Py_ssize_t base = rows * columns;
        for (Py_ssize_t column = 0; column < columns; column++) {
            double value;
            q = parse_number(q, &value, 0);
            if (q == NULL || q > line_end) return -1;
            if (wide)
                wide_out[base + column] = value;
            else
                narrow_out[base + column] = (float)value;
            if (column + 1 < columns) {
                if (q >= line_end || *q != ',') return -1;
                q++;
            }
        }
        if (q != line_end) return -1; /* more fields than columns, or trailing text */
        rows++;
    }
    return found < 0 ? -1 : rows;
}

/* --- The same, with AVX2 (x86-64 CPUs since 2013; chosen at import where the CPU has it) ----
 *
 * The scalar loop above reads a byte at a time: a line of commas alone scans at about 900 MB/s
 * here, the whole parse at 800. This one finds a line's commas 32 bytes at a time and converts
 * each field of at most 16 bytes (after its sign) with a few vector instructions: its digits
 * are moved to the right end of a register, the '.' dropped, and summed in pairs, fours and
 * eights (1.1 GB/s, 1.4x, on the benchmark's blocks). The value is the scalar parser's to the
 * bit: the same mantissa, divided by the same power of ten. A field it does not take (longer,
 * an exponent, anything but digits and one '.') goes to the scalar parse_number, which refuses
 * or answers as it always does; what is not a number is refused either way. */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define HAVE_AVX2_PATH 1
#define AVX2 __attribute__((target("avx2")))

/* SHUFFLES[n][dot]: for a field of n bytes with its '.' at dot (n: none), where each lane of
 * the right-aligned digits comes from (0x80: a zero lane before them). */
static uint8_t SHUFFLES[17][17][16];

static void init_shuffles(void) {
    for (int n = 0; n <= 16; n++)
        for (int dot = 0; dot <= n; dot++) {
            int digits = dot < n ? n - 1 : n;
            for (int lane = 0; lane < 16; lane++) {
                int i = lane - (16 - digits);
                SHUFFLES[n][dot][lane] = i < 0 ? 0x80 : (uint8_t)(i < dot ? i : i + 1);
            }
        }
}

/* The number that is the whole field [s, e): 1 and its value in *out, or 0 where it is not one.
 * 16 bytes are read from the field's start only where they lie before `end`. */
AVX2 static inline int field_value(const char *s, const char *e, const char *end, double *out) {
    const char *field = s;
    int negative = *s == '-';
    s += negative | (*s == '+');
    Py_ssize_t n = e - s;
    if (n <= 0 || n > 16 || end - s < 16) goto scalar;
    __m128i digits = _mm_sub_epi8(_mm_loadu_si128((const __m128i *)s), _mm_set1_epi8('0'));
    __m128i is_digit = _mm_cmpeq_epi8(_mm_min_epu8(digits, _mm_set1_epi8(9)), digits);
    unsigned others = ~(unsigned)_mm_movemask_epi8(is_digit) & ((1u << n) - 1);
    int dot = (int)n, fraction = 0;
    if (others) {
        if (others & (others - 1)) goto scalar; /* two non-digits: an exponent, or no number */
        dot = __builtin_ctz(others);
        if (s[dot] != '.' || n == 1) goto scalar;
        fraction = (int)n - dot - 1;
    }
    __m128i x = _mm_shuffle_epi8(digits, _mm_loadu_si128((const __m128i *)SHUFFLES[n][dot]));
    __m128i pairs = _mm_maddubs_epi16(x, _mm_setr_epi8(10, 1, 10, 1, 10, 1, 10, 1, 10, 1, 10, 1, 10, 1, 10, 1));
    __m128i fours = _mm_madd_epi16(pairs, _mm_setr_epi16(100, 1, 100, 1, 100, 1, 100, 1));
    __m128i packed = _mm_packus_epi32(fours, fours);
    __m128i eights = _mm_madd_epi16(packed, _mm_setr_epi16(10000, 1, 10000, 1, 10000, 1, 10000, 1));
    uint64_t both = (uint64_t)_mm_cvtsi128_si64(eights);
    uint64_t mantissa = (both & 0xFFFFFFFFu) * 100000000u + (both >> 32);
    if (mantissa > MAX_EXACT) goto scalar; /* which refuses it too */
    double value = (double)(int64_t)mantissa / POWERS[fraction];
    *out = negative ? -value : value;
    return 1;
scalar:;
    const char *after = parse_number(field, out, 0);
    return after == e;
}

#define STORE_FIELD()                                                                             \
    do {                                                                                          \
        if (fields >= columns || !field_value(start, e, end, &value)) return -1;                  \
        if (wide)                                                                                 \
            wide_out[base + fields] = value;                                                      \
        else                                                                                      \
            narrow_out[base + fields] = (float)value;                                             \
        fields++;                                                                                 \
    } while (0)

/* parse_block's contract, answers and refusals. */
AVX2 static Py_ssize_t parse_block_avx2(const char *p, const char *end, Py_ssize_t columns,
                                        int bracketed, int wide, void *out, Py_ssize_t capacity) {
    float *narrow_out = (float *)out;
    double *wide_out = (double *)out;
    const __m256i comma = _mm256_set1_epi8(',');
    Py_ssize_t rows = 0;
    const char *line, *line_end;
    int found;
    while ((found = next_line(&p, end, bracketed, &line, &line_end)) > 0) {
        if (rows >= capacity) return -1;
        Py_ssize_t base = rows * columns, fields = 0;
        const char *start = line, *q = line, *e;
        double value;
        for (; q < line_end && end - q >= 32; q += 32) {
            __m256i chunk = _mm256_loadu_si256((const __m256i *)q);
            uint32_t commas = (uint32_t)_mm256_movemask_epi8(_mm256_cmpeq_epi8(chunk, comma));
            if (line_end - q < 32) commas &= (1u << (line_end - q)) - 1;
            while (commas) {
                e = q + __builtin_ctz(commas);
                commas &= commas - 1;
                STORE_FIELD();
                start = e + 1;
            }
        }
        /* within the block's last 32 bytes: the commas found one by one */
        for (const char *from = start > q ? start : q; from < line_end; from = start) {
            e = memchr(from, ',', (size_t)(line_end - from));
            if (e == NULL) break;
            STORE_FIELD();
            start = e + 1;
        }
        e = line_end;
        STORE_FIELD();
        if (fields != columns) return -1;
        rows++;
    }
    return found < 0 ? -1 : rows;
}
#undef STORE_FIELD
#endif

typedef Py_ssize_t (*BlockParser)(const char *, const char *, Py_ssize_t, int, int, void *, Py_ssize_t);
static BlockParser block_parser = parse_block; /* parse_block_avx2 where the CPU has AVX2 */

static PyObject *parse(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *data;
    Py_buffer out;
    Py_ssize_t columns;
    int bracketed, wide, scalar = 0;
    /* bytes, not any buffer: its NUL terminator ends the last number's scan */
    if (!PyArg_ParseTuple(args, "Snppw*|p", &data, &columns, &bracketed, &wide, &out, &scalar))
        return NULL;
    BlockParser chosen = scalar ? parse_block : block_parser;
    const char *text = PyBytes_AS_STRING(data);
    Py_ssize_t length = PyBytes_GET_SIZE(data);
    Py_ssize_t item = wide ? (Py_ssize_t)sizeof(double) : (Py_ssize_t)sizeof(float);
    Py_ssize_t rows = -1;
    if (columns > 0 && out.len % (columns * item) == 0) {
        Py_ssize_t capacity = out.len / (columns * item);
        Py_BEGIN_ALLOW_THREADS;
        rows = chosen(text, text + length, columns, bracketed, wide, out.buf, capacity);
        Py_END_ALLOW_THREADS;
    }
    PyBuffer_Release(&out);
    return PyLong_FromSsize_t(rows);
}

/* --- JSON rows: {"instances": [[...], ...]} or [[...], ...], numbers only ---------------------
 *
 * The serving runtime's usual request body. orjson makes a Python float of every number and
 * struct packs them again (7.7 us for one row of 256 here); this writes them straight into the
 * matrix. It takes that one shape of document only, with JSON's own number grammar, and
 * refuses anything else (other keys, nesting, strings, empty or ragged rows, a number Clinger's
 * fast path cannot convert exactly), so the caller's JSON decoder then answers as it always
 * did, errors included. */

#define GIL_FREE_ABOVE (1 << 16) /* bytes of body */

static inline const char *skip_space(const char *p) {
    while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r') p++;
    return p;
}

/* Numbers of the body [p, end) parsed into out (capacity of them); *columns set from the first
 * row. -1: refused. A NUL inside the body stops every scan there, short of end. */
static Py_ssize_t parse_json_rows(const char *p, const char *end, int wide, void *out,
                                  Py_ssize_t capacity, Py_ssize_t *columns) {
    static const char KEY[] = "\"instances\"";
    float *narrow_out = (float *)out;
    double *wide_out = (double *)out;
    int object = 0;
    p = skip_space(p);
    if (*p == '{') {
        object = 1;
        p = skip_space(p + 1);
        if (strncmp(p, KEY, sizeof KEY - 1) != 0) return -1;
        p = skip_space(p + sizeof KEY - 1);
        if (*p != ':') return -1;
        p = skip_space(p + 1);
    }
    if (*p != '[') return -1;
    p = skip_space(p + 1);
    Py_ssize_t count = 0, width = -1;
    for (;;) {
        if (*p != '[') return -1;
        p = skip_space(p + 1);
        Py_ssize_t row = 0;
        for (;;) {
            double value;
            p = parse_number(p, &value, 1);
            if (p == NULL) return -1;
            if (count >= capacity) return -1;
            if (wide)
                wide_out[count] = value;
            else
                narrow_out[count] = (float)value;
            count++;
            row++;
            p = skip_space(p);
            if (*p == ']') break;
            if (*p != ',') return -1;
            p = skip_space(p + 1);
        }
        if (width < 0) width = row;
        else if (row != width) return -1;
        p = skip_space(p + 1);
        if (*p == ']') break;
        if (*p != ',') return -1;
        p = skip_space(p + 1);
    }
    p = skip_space(p + 1);
    if (object) {
        if (*p != '}') return -1;
        p = skip_space(p + 1);
    }
    if (p != end) return -1; /* trailing text, or a NUL inside the body */
    *columns = width;
    return count;
}

static PyObject *json_rows(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *data;
    Py_buffer out;
    int wide;
    /* bytes, not any buffer: its NUL terminator ends every scan */
    if (!PyArg_ParseTuple(args, "Spw*", &data, &wide, &out)) return NULL;
    Py_ssize_t item = wide ? (Py_ssize_t)sizeof(double) : (Py_ssize_t)sizeof(float);
    Py_ssize_t count = -1, columns = 0;
    const char *text = PyBytes_AS_STRING(data);
    Py_ssize_t length = PyBytes_GET_SIZE(data);
    /* A request of a few rows keeps the GIL: handing it over lets the ORT worker start a
     * batch before the requests queued behind this one join it. */
    if (length < GIL_FREE_ABOVE) {
        count = parse_json_rows(text, text + length, wide, out.buf, out.len / item, &columns);
    } else {
        Py_BEGIN_ALLOW_THREADS;
        count = parse_json_rows(text, text + length, wide, out.buf, out.len / item, &columns);
        Py_END_ALLOW_THREADS;
    }
    PyBuffer_Release(&out);
    if (count < 0) Py_RETURN_NONE;
    return Py_BuildValue("nn", count / columns, columns);
}

/* The number of "\n" bytes in a buffer: memchr's vector scan, several times faster than
 * bytes.count's byte loop (0.3 ms a MiB), which the reader paid twice per block. */
static PyObject *newlines(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer data;
    if (!PyArg_ParseTuple(args, "y*", &data)) return NULL;
    const char *p = (const char *)data.buf, *end = p + data.len;
    Py_ssize_t count = 0;
    Py_BEGIN_ALLOW_THREADS;
    while (p < end && (p = memchr(p, '\n', (size_t)(end - p))) != NULL) {
        count++;
        p++;
    }
    Py_END_ALLOW_THREADS;
    PyBuffer_Release(&data);
    return PyLong_FromSsize_t(count);
}

/* Where the n-th line from `start` ends (the offset after its "\n"), or -1 where fewer lines
 * end: memchr from line to line, so cutting a block into batches costs no Python per line. */
static PyObject *line_end(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer data;
    Py_ssize_t start, count;
    if (!PyArg_ParseTuple(args, "y*nn", &data, &start, &count)) return NULL;
    const char *base = (const char *)data.buf, *end = base + data.len;
    const char *p = start >= 0 && start <= data.len ? base + start : end;
    Py_ssize_t found = -1;
    Py_BEGIN_ALLOW_THREADS;
    for (Py_ssize_t seen = 0; count > 0 && p < end;) {
        const char *newline = memchr(p, '\n', (size_t)(end - p));
        if (newline == NULL) break;
        p = newline + 1;
        if (++seen == count) {
            found = p - base;
            break;
        }
    }
    Py_END_ALLOW_THREADS;
    PyBuffer_Release(&data);
    return PyLong_FromSsize_t(found);
}

static PyMethodDef METHODS[] = {
    {"parse", parse, METH_VARARGS,
     "parse(data: bytes, columns, bracketed, wide, out, scalar=False) -> rows, or -1 where the\n"
     "block is refused. out: a writable C-contiguous buffer of float32 (wide: float64), a multiple\n"
     "of columns. scalar: the byte-at-a-time parser even where the AVX2 one was chosen."},
    {"json_rows", json_rows, METH_VARARGS,
     "json_rows(body: bytes, wide, out) -> (rows, columns) written to out, or None where refused."},
    {"newlines", newlines, METH_VARARGS, "newlines(data: bytes-like) -> the number of b'\\n' in it."},
    {"line_end", line_end, METH_VARARGS,
     "line_end(data: bytes-like, start, n) -> the offset after the n-th b'\\n' from start, or -1."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef MODULE = {
    PyModuleDef_HEAD_INIT, "_numbers", NULL, -1, METHODS, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__numbers(void) {
    PyObject *module = PyModule_Create(&MODULE);
    if (module == NULL) return NULL;
    int vector = 0;
#ifdef HAVE_AVX2_PATH
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2")) {
        init_shuffles();
        block_parser = parse_block_avx2;
        vector = 1;
    }
#endif
    /* Which block parser runs here (tests compare it with the scalar one). */
    if (PyModule_AddIntConstant(module, "AVX2", vector) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
