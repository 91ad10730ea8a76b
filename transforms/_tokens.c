/* The byte-level part of transforms/text.py's tokenizer, in one pass over the texts' UTF-8 bytes.
 *
 * It does what the numpy version did with a dozen passes over per-byte arrays: classify each byte with the
 * 256-entry table text.py builds (_BYTE_CLASS: delete, space or word), cut each text into tokens (runs of
 * non-space bytes), drop the deleted bytes, lowercase A-Z, and look each token's word up in the vocabulary.
 * Tokens holding a byte >= 0x80 are only listed: text.py hands them to the Arrow kernels, which own Unicode.
 *
 * Inputs are buffers (numpy arrays, bytes, Arrow buffers); outputs are written into numpy arrays the caller
 * allocates. The GIL is released while scanning. No allocation happens here.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

enum { CLASS_DELETE = 0, CLASS_SPACE = 1, CLASS_WORD = 2 };

static uint64_t fnv1a_start(void) { return 1469598103934665603ULL; }
static uint64_t fnv1a_step(uint64_t h, uint8_t b) { return (h ^ b) * 1099511628211ULL; }

typedef struct {
    const int32_t *slots; /* vocabulary index + 1 per slot, 0 = empty; the length is a power of two */
    uint64_t mask;
    const uint8_t *words; /* the vocabulary's UTF-8 bytes, word after word */
    const int64_t *offsets; /* word i is words[offsets[i] : offsets[i + 1]] */
} Vocabulary;

static int32_t lookup(const Vocabulary *v, uint64_t hash, const uint8_t *word, int64_t length) {
    for (uint64_t slot = hash & v->mask;; slot = (slot + 1) & v->mask) {
        int32_t entry = v->slots[slot];
        if (entry == 0) return -1;
        int64_t start = v->offsets[entry - 1], stop = v->offsets[entry];
        if (stop - start == length && memcmp(v->words + start, word, (size_t)length) == 0) return entry - 1;
    }
}

static int get_buffer(PyObject *obj, Py_buffer *view, int writable, Py_ssize_t itemsize, const char *name) {
    if (PyObject_GetBuffer(obj, view, writable ? PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS : PyBUF_C_CONTIGUOUS) < 0)
        return -1;
    if (view->len % itemsize != 0) {
        PyErr_Format(PyExc_ValueError, "%s: %zd bytes is not a whole number of %zd-byte items", name, view->len,
                     itemsize);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

PyDoc_STRVAR(build_table_doc,
             "build_table(words, offsets, slots)\n\n"
             "Fills slots (int32, zeroed, a power of two longer than the vocabulary) with an open-addressing hash\n"
             "table of the words words[offsets[i]:offsets[i + 1]] (offsets int64). The first of equal words wins.");

static PyObject *build_table(PyObject *self, PyObject *args) {
    PyObject *words_obj, *offsets_obj, *slots_obj;
    if (!PyArg_ParseTuple(args, "OOO", &words_obj, &offsets_obj, &slots_obj)) return NULL;
    Py_buffer words, offsets, slots;
    if (get_buffer(words_obj, &words, 0, 1, "words") < 0) return NULL;
    if (get_buffer(offsets_obj, &offsets, 0, 8, "offsets") < 0) goto release_words;
    if (get_buffer(slots_obj, &slots, 1, 4, "slots") < 0) goto release_offsets;
    Py_ssize_t n = offsets.len / 8 - 1, size = slots.len / 4;
    PyObject *result = NULL;
    if (n < 0 || size <= n || (size & (size - 1)) != 0) {
        PyErr_SetString(PyExc_ValueError, "slots must be a power of two longer than the vocabulary");
        goto release_slots;
    }
    const uint8_t *w = words.buf;
    const int64_t *o = offsets.buf;
    int32_t *s = slots.buf;
    Vocabulary v = {s, (uint64_t)size - 1, w, o};
    for (Py_ssize_t i = 0; i < n; i++) {
        if (o[i] < 0 || o[i + 1] < o[i] || o[i + 1] > words.len) {
            PyErr_SetString(PyExc_ValueError, "vocabulary offsets out of range");
            goto release_slots;
        }
        uint64_t h = fnv1a_start();
        for (int64_t k = o[i]; k < o[i + 1]; k++) h = fnv1a_step(h, w[k]);
        if (lookup(&v, h, w + o[i], o[i + 1] - o[i]) >= 0) continue;
        uint64_t slot = h & v.mask;
        while (s[slot] != 0) slot = (slot + 1) & v.mask;
        s[slot] = (int32_t)(i + 1);
    }
    result = Py_None;
    Py_INCREF(result);
release_slots:
    PyBuffer_Release(&slots);
release_offsets:
    PyBuffer_Release(&offsets);
release_words:
    PyBuffer_Release(&words);
    return result;
}

PyDoc_STRVAR(scan_doc,
             "scan(byte_class, data, offsets, slots, words, word_offsets, index, starts, tokens_before, unicode)\n"
             "    -> (tokens, unicode tokens)\n\n"
             "Text i is data[offsets[i] : offsets[i + 1]] (offsets int64, non-decreasing, within data). For each\n"
             "token with a word (in order): index[k] = the vocabulary index of its lowercased word or -1 (int32),\n"
             "starts[k] = the offset in data of its first byte (int64); unicode lists, in order, the tokens that\n"
             "hold a byte >= 0x80 (int64; their index is -1); tokens_before[i] = the tokens of the texts before\n"
             "text i (int64, one per offset). index, starts and unicode need room for len(data) tokens.");

static PyObject *scan(PyObject *self, PyObject *args) {
    PyObject *objs[10];
    if (!PyArg_ParseTuple(args, "OOOOOOOOOO", &objs[0], &objs[1], &objs[2], &objs[3], &objs[4], &objs[5],
                          &objs[6], &objs[7], &objs[8], &objs[9]))
        return NULL;
    static const char *names[10] = {"byte_class", "data", "offsets", "slots", "words",
                                    "word_offsets", "index", "starts", "tokens_before", "unicode"};
    static const Py_ssize_t itemsize[10] = {1, 1, 8, 4, 1, 8, 4, 8, 8, 8};
    static const int writable[10] = {0, 0, 0, 0, 0, 0, 1, 1, 1, 1};
    Py_buffer b[10];
    int held = 0;
    PyObject *result = NULL;
    for (; held < 10; held++)
        if (get_buffer(objs[held], &b[held], writable[held], itemsize[held], names[held]) < 0) goto release;

    const uint8_t *cls = b[0].buf, *data = b[1].buf;
    const int64_t *offsets = b[2].buf;
    Py_ssize_t texts = b[2].len / 8 - 1, size = b[1].len, slots = b[3].len / 4;
    int32_t *index = b[6].buf;
    int64_t *starts = b[7].buf, *before = b[8].buf, *unicode = b[9].buf;
    if (b[0].len != 256 || texts < 0 || b[8].len / 8 != texts + 1 || slots == 0 || (slots & (slots - 1)) != 0) {
        PyErr_SetString(PyExc_ValueError, "scan: byte_class, offsets, tokens_before or slots have the wrong size");
        goto release;
    }
    Py_ssize_t room = b[6].len / 4;
    if (b[7].len / 8 < room) room = b[7].len / 8;
    if (b[9].len / 8 < room) room = b[9].len / 8;
    for (Py_ssize_t i = 0; i < texts; i++) {
        if (offsets[i] < 0 || offsets[i + 1] < offsets[i] || offsets[i + 1] > size) {
            PyErr_SetString(PyExc_ValueError, "scan: offsets out of range");
            goto release;
        }
    }
    if (texts > 0 && offsets[texts] - offsets[0] > room) {
        PyErr_SetString(PyExc_ValueError, "scan: index, starts and unicode need room for a token per byte");
        goto release;
    }
    Vocabulary v = {b[3].buf, (uint64_t)slots - 1, b[4].buf, b[5].buf};
    int64_t tokens = 0, unicode_tokens = 0;
    /* A word longer than the longest vocabulary word cannot match: only that many bytes are kept. */
    int64_t longest = 0;
    Py_ssize_t vocabulary_size = b[5].len / 8 - 1;
    for (Py_ssize_t i = 0; i < vocabulary_size; i++) {
        int64_t length = v.offsets[i + 1] - v.offsets[i];
        if (length > longest) longest = length;
    }
    uint8_t lower[256];
    for (int c = 0; c < 256; c++) lower[c] = (uint8_t)(c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c);
    uint8_t stack_word[256];
    uint8_t *word = stack_word;
    if (longest + 1 > (int64_t)sizeof(stack_word)) {
        word = PyMem_Malloc((size_t)longest + 1);
        if (word == NULL) {
            PyErr_NoMemory();
            goto release;
        }
    }
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < texts; i++) {
        before[i] = tokens;
        int64_t p = offsets[i], end = offsets[i + 1];
        while (p < end) {
            while (p < end && cls[data[p]] == CLASS_SPACE) p++;
            if (p == end) break;
            /* Branch-free over the token's bytes: every byte is stored, and only a word byte advances. A word
             * longer than the longest vocabulary word cannot match, so the store position stops at `longest`. */
            int64_t start = p, length = 0;
            uint8_t high = 0;
            for (; p < end; p++) {
                uint8_t c = data[p], k = cls[c];
                if (k == CLASS_SPACE) break;
                word[length < longest ? length : longest] = lower[c];
                length += k == CLASS_WORD;
                high |= c; /* deleted bytes are ASCII: only word bytes can set the high bit */
            }
            if (length == 0) continue; /* punctuation only: no word */
            starts[tokens] = start;
            if (high & 0x80) {
                index[tokens] = -1;
                unicode[unicode_tokens++] = tokens;
            } else if (length > longest) {
                index[tokens] = -1;
            } else {
                uint64_t h = fnv1a_start();
                for (int64_t k = 0; k < length; k++) h = fnv1a_step(h, word[k]);
                index[tokens] = lookup(&v, h, word, length);
            }
            tokens++;
        }
    }
    before[texts] = tokens;
    Py_END_ALLOW_THREADS
    if (word != stack_word) PyMem_Free(word);
    result = Py_BuildValue("(LL)", (long long)tokens, (long long)unicode_tokens);
release:
    for (int i = 0; i < held; i++) PyBuffer_Release(&b[i]);
    return result;
}


/* One UTF-8 character at data[p] (p < end, data[p] >= 0x80): its length, 0 when it is not valid UTF-8 (overlong,
 * surrogate, beyond U+10FFFF, truncated), which the caller hands to the Arrow kernels. */
static int decode(const uint8_t *data, int64_t p, int64_t end, uint32_t *cp) {
    uint8_t c = data[p];
    int n;
    uint8_t lo = 0x80, hi = 0xBF;
    if (c < 0xC2) return 0;
    if (c < 0xE0) n = 2, *cp = c & 0x1F;
    else if (c < 0xF0) {
        n = 3, *cp = c & 0x0F;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F;
    } else if (c < 0xF5) {
        n = 4, *cp = c & 0x07;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
    } else
        return 0;
    if (p + n > end) return 0;
    for (int k = 1; k < n; k++) {
        uint8_t b = data[p + k];
        if (b < lo || b > hi) return 0;
        lo = 0x80, hi = 0xBF;
        *cp = (*cp << 6) | (b & 0x3F);
    }
    return n;
}

static int encode(uint32_t cp, uint8_t *out) {
    if (cp < 0x80) return out[0] = (uint8_t)cp, 1;
    if (cp < 0x800) return out[0] = (uint8_t)(0xC0 | (cp >> 6)), out[1] = (uint8_t)(0x80 | (cp & 0x3F)), 2;
    if (cp < 0x10000) {
        out[0] = (uint8_t)(0xE0 | (cp >> 12)), out[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (uint8_t)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (uint8_t)(0xF0 | (cp >> 18)), out[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F)), out[3] = (uint8_t)(0x80 | (cp & 0x3F));
    return 4;
}

enum { CLASS_UNKNOWN = 3 };

PyDoc_STRVAR(scan_ids_doc,
             "scan_ids(byte_class, code_point_lower, code_point_class, data, offsets, slots, words, word_offsets,\n"
             "         ids, oov_id, reserved, fallback) -> (words kept, kept words out of vocabulary, fallback rows)\n\n"
             "The whole tokenizer for text i = data[offsets[i] : offsets[i + 1]]: each character classified (ASCII\n"
             "by byte_class, others by code_point_class of the code point, which code_point_lower lowercases:\n"
             "delete, space, word or unknown), tokens cut at spaces, each token's lowercased word looked up, and\n"
             "row i of ids (int32, n x length, filled with the pad id by the caller) given the first `length`\n"
             "words' ids (vocabulary index + reserved, or oov_id). A text holding invalid UTF-8 or a character of\n"
             "class unknown is listed in fallback (int64, room for n), its row of ids not final: the caller\n"
             "tokenizes those with the Arrow kernels. Stats count the kept words of the other rows.");

static PyObject *scan_ids(PyObject *self, PyObject *args) {
    PyObject *objs[9], *fallback_obj;
    long long oov_id, reserved;
    if (!PyArg_ParseTuple(args, "OOOOOOOOOLLO", &objs[0], &objs[1], &objs[2], &objs[3], &objs[4], &objs[5],
                          &objs[6], &objs[7], &objs[8], &oov_id, &reserved, &fallback_obj))
        return NULL;
    static const char *names[10] = {"byte_class", "code_point_lower", "code_point_class", "data", "offsets",
                                    "slots", "words", "word_offsets", "ids", "fallback"};
    static const Py_ssize_t itemsize[10] = {1, 4, 1, 1, 8, 4, 1, 8, 4, 8};
    static const int writable[10] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1};
    PyObject *all[10] = {objs[0], objs[1], objs[2], objs[3], objs[4], objs[5], objs[6], objs[7], objs[8],
                         fallback_obj};
    Py_buffer b[10];
    int held = 0;
    PyObject *result = NULL;
    for (; held < 10; held++)
        if (get_buffer(all[held], &b[held], writable[held], itemsize[held], names[held]) < 0) goto release;

    const uint8_t *cls = b[0].buf, *cp_class = b[2].buf, *data = b[3].buf;
    const int32_t *cp_lower = b[1].buf;
    const int64_t *offsets = b[4].buf;
    Py_ssize_t texts = b[4].len / 8 - 1, size = b[3].len, slots = b[5].len / 4, code_points = b[2].len;
    int32_t *ids = b[8].buf;
    int64_t *fallback = b[9].buf;
    if (b[0].len != 256 || b[1].len / 4 != code_points || texts < 0 || slots == 0 || (slots & (slots - 1)) != 0) {
        PyErr_SetString(PyExc_ValueError, "scan_ids: byte_class, code point tables, offsets or slots: wrong size");
        goto release;
    }
    if (texts > 0 && (b[8].len / 4) % texts != 0) {
        PyErr_SetString(PyExc_ValueError, "scan_ids: ids must be texts x length");
        goto release;
    }
    Py_ssize_t length = texts > 0 ? b[8].len / 4 / texts : 0;
    if (b[9].len / 8 < texts) {
        PyErr_SetString(PyExc_ValueError, "scan_ids: fallback needs room for every text");
        goto release;
    }
    for (Py_ssize_t i = 0; i < texts; i++) {
        if (offsets[i] < 0 || offsets[i + 1] < offsets[i] || offsets[i + 1] > size) {
            PyErr_SetString(PyExc_ValueError, "scan_ids: offsets out of range");
            goto release;
        }
    }
    for (Py_ssize_t c = 0; c < code_points; c++) {
        if (cp_lower[c] < 0 || cp_lower[c] > 0x10FFFF || cp_class[c] > CLASS_UNKNOWN) {
            PyErr_SetString(PyExc_ValueError, "scan_ids: code point tables out of range");
            goto release;
        }
    }
    Vocabulary v = {b[5].buf, (uint64_t)slots - 1, b[6].buf, b[7].buf};
    int64_t longest = 0;
    Py_ssize_t vocabulary_size = b[7].len / 8 - 1;
    for (Py_ssize_t i = 0; i < vocabulary_size; i++) {
        int64_t n = v.offsets[i + 1] - v.offsets[i];
        if (n > longest) longest = n;
    }
    uint8_t lower[256];
    for (int c = 0; c < 256; c++) lower[c] = (uint8_t)(c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c);
    /* The word is stored up to `longest` bytes (plus room for one character past it); longer cannot match. */
    uint8_t stack_word[256];
    uint8_t *word = stack_word;
    if (longest + 8 > (int64_t)sizeof(stack_word)) {
        word = PyMem_Malloc((size_t)longest + 8);
        if (word == NULL) {
            PyErr_NoMemory();
            goto release;
        }
    }
    int64_t kept = 0, oov = 0, fallbacks = 0;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < texts; i++) {
        int32_t *row = ids + i * length;
        int64_t p = offsets[i], end = offsets[i + 1], position = 0, row_oov = 0;
        int fell_back = 0;
        while (p < end && position < length) {
            /* A token: a run of characters that are not spaces; deleted characters add nothing to its word. */
            int64_t n = 0;
            int in_token = 0;
            while (p < end) {
                uint8_t c = data[p], k;
                uint32_t cp = c;
                int step = 1;
                if (c < 0x80) {
                    k = cls[c];
                    cp = lower[c];
                } else {
                    step = decode(data, p, end, &cp);
                    if (step == 0 || cp >= (uint32_t)code_points || cp_class[cp] == CLASS_UNKNOWN) {
                        fell_back = 1;
                        break;
                    }
                    k = cp_class[cp];
                    cp = (uint32_t)cp_lower[cp];
                }
                p += step;
                if (k == CLASS_SPACE) {
                    if (in_token) break;
                    continue;
                }
                in_token = 1;
                if (k == CLASS_WORD) {
                    if (n <= longest) {
                        if (cp < 0x80) word[n++] = (uint8_t)cp;
                        else n += encode(cp, word + n);
                    } else {
                        n += 1; /* past the longest word: only that it is longer counts */
                    }
                }
            }
            if (fell_back) break;
            if (n == 0) continue; /* no token, or punctuation only: no word */
            int32_t index = -1;
            if (n <= longest) {
                uint64_t h = fnv1a_start();
                for (int64_t k = 0; k < n; k++) h = fnv1a_step(h, word[k]);
                index = lookup(&v, h, word, n);
            }
            if (index < 0) row_oov++;
            row[position++] = index < 0 ? (int32_t)oov_id : (int32_t)(index + reserved);
        }
        /* Past the kept words the text is only checked for invalid UTF-8, which the Arrow kernels refuse. */
        while (!fell_back && p < end) {
            uint32_t cp;
            if (data[p] < 0x80) p++;
            else {
                int step = decode(data, p, end, &cp);
                if (step == 0) fell_back = 1;
                p += step;
            }
        }
        if (fell_back) {
            fallback[fallbacks++] = i;
            continue;
        }
        kept += position;
        oov += row_oov;
    }
    Py_END_ALLOW_THREADS
    if (word != stack_word) PyMem_Free(word);
    result = Py_BuildValue("(LLL)", (long long)kept, (long long)oov, (long long)fallbacks);
release:
    for (int i = 0; i < held; i++) PyBuffer_Release(&b[i]);
    return result;
}

static PyMethodDef methods[] = {
    {"build_table", build_table, METH_VARARGS, build_table_doc},
    {"scan", scan, METH_VARARGS, scan_doc},
    {"scan_ids", scan_ids, METH_VARARGS, scan_ids_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "transforms._tokens",
                                    "The byte-level tokenizer scan; see transforms/text.py.", -1, methods};

PyMODINIT_FUNC PyInit__tokens(void) { return PyModule_Create(&module); }
