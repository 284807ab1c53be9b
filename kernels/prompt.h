/*
 * prompt.h - prompts to class indices through the model's own vocabulary
 * (doc/model-format.md "Prompts").
 */
#ifndef DEXEC_KERNELS_PROMPT_H
#define DEXEC_KERNELS_PROMPT_H

#include <stddef.h>

#include <dexec/dexec.h>

#include "safetensors.h"

typedef struct dxk_vocab {
    int num_classes; /* K: index K is the null class */
    size_t n;
    char **words;    /* normalised keys of dexec.vocab */
    int *classes;
    char **class_names; /* K names (dexec.class_names, or "classN") */
} dxk_vocab;

/* Reads dexec.vocab and dexec.class_names of st for a model of K classes.
 * Without dexec.vocab, the class names are the vocabulary. DEXEC_EINVAL
 * names the file, the key and the entry. */
dexec_status dxk_vocab_load(const dxk_safetensors *st, int K, dxk_vocab **out, char *err,
                            size_t errlen);
void dxk_vocab_free(dxk_vocab *v);

/* The vocabulary of K classes named by labels[0..K-1], each a
 * comma-separated list of synonyms ("tench, Tinca tinca": the ImageNet
 * label form of a diffusers DiT pipeline's id2label): the whole label is
 * the class name and every synonym a key. DEXEC_ENOMEM only. */
dexec_status dxk_vocab_from_labels(const char *const *labels, int K, dxk_vocab **out, char *err,
                                   size_t errlen);

/* Lower-cases, trims and collapses inner whitespace; returns a malloc'd
 * string (NULL when out of memory). NULL is read as "". */
char *dxk_prompt_normalize(const char *prompt);

/* The class of a prompt: "" -> K (null); a vocabulary key -> its class;
 * otherwise the one class named by every whole-word key found in it.
 * DEXEC_EINVAL ("prompt '...' ...; known words: ...") otherwise. */
dexec_status dxk_prompt_class(const dxk_vocab *v, const char *prompt, int *cls, char *err,
                              size_t errlen);

#endif
