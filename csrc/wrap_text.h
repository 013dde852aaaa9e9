/*
 * wrap_text.h -- the string-taking Python functions of stickytoken._core (wrap_text.c) and
 * their docstrings, for module.c's method table; and the WordPiece type (wrap_wordpiece.c).
 */
#ifndef ST_WRAP_TEXT_H
#define ST_WRAP_TEXT_H

#include <Python.h>

/* Each returns a new reference, or NULL with an exception set. */
PyObject *py_token_categories(PyObject *module, PyObject *args, PyObject *kwds);
PyObject *py_bytelevel_decode(PyObject *module, PyObject *args, PyObject *kwds);
PyObject *py_build_token_batch(PyObject *module, PyObject *args, PyObject *kwds);
PyObject *py_build_text_variants(PyObject *module, PyObject *args, PyObject *kwds);

extern const char token_categories_doc[];
extern const char bytelevel_decode_doc[];
extern const char build_token_batch_doc[];
extern const char build_text_variants_doc[];

/* stickytoken._core.WordPiece (wrap_wordpiece.c): a vocabulary trie and its encode method. */
extern PyTypeObject wordpiece_type;

#endif
