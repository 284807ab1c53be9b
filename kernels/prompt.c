/*
 * prompt.c - prompt -> class index. A model knows a few classes; its file
 * carries the words that name them (dexec.vocab), so the mapping travels
 * with the weights and needs no text encoder.
 */
#include <config.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <dexec/value.h>

#include "prompt.h"

char *dxk_prompt_normalize(const char *prompt)
{
    const unsigned char *s = (const unsigned char *)(prompt ? prompt : "");
    char *out = malloc(strlen((const char *)s) + 1), *o = out;
    int space = 0;

    if (out == NULL)
        return NULL;
    for (; *s != '\0'; s++) {
        if (*s == ' ' || *s == '\t' || *s == '\n' || *s == '\r' || *s == '\f' || *s == '\v') {
            space = o != out;
            continue;
        }
        if (space)
            *o++ = ' ';
        space = 0;
        /* ASCII only: the locale must not change which class a prompt names */
        *o++ = (char)(*s >= 'A' && *s <= 'Z' ? *s - 'A' + 'a' : *s);
    }
    *o = '\0';
    return out;
}

/* Characters that continue a word: "t-shirt/top" is one word, so "shirt"
 * and "top" are not found inside it; punctuation such as ',' ends a word. */
static int dx_wordchar(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '-' || c == '/' || c == '\'' || c == '_' || c >= 0x80;
}

static int dx_has_word(const char *text, const char *word)
{
    size_t wl = strlen(word);
    const char *p = text;

    if (wl == 0)
        return 0;
    while ((p = strstr(p, word)) != NULL) {
        int before = p == text || !dx_wordchar((unsigned char)p[-1]);
        int after = !dx_wordchar((unsigned char)p[wl]);

        if (before && after)
            return 1;
        p++;
    }
    return 0;
}

void dxk_vocab_free(dxk_vocab *v)
{
    size_t i;

    if (v == NULL)
        return;
    for (i = 0; i < v->n; i++)
        free(v->words[i]);
    free(v->words);
    free(v->classes);
    if (v->class_names != NULL)
        for (i = 0; i < (size_t)v->num_classes; i++)
            free(v->class_names[i]);
    free(v->class_names);
    free(v);
}

static dexec_status dx_vocab_add(dxk_vocab *v, const char *word, int cls)
{
    char **w = realloc(v->words, (v->n + 1) * sizeof *w);
    int *c;

    if (w == NULL)
        return DEXEC_ENOMEM;
    v->words = w;
    c = realloc(v->classes, (v->n + 1) * sizeof *c);
    if (c == NULL)
        return DEXEC_ENOMEM;
    v->classes = c;
    if ((v->words[v->n] = dxk_prompt_normalize(word)) == NULL)
        return DEXEC_ENOMEM;
    v->classes[v->n++] = cls;
    return DEXEC_OK;
}

dexec_status dxk_vocab_load(const dxk_safetensors *st, int K, dxk_vocab **out, char *err,
                            size_t errlen)
{
    const char *names = dxk_st_meta(st, "dexec.class_names");
    const char *vocab = dxk_st_meta(st, "dexec.vocab");
    dexec_value *jn = NULL, *jv = NULL;
    char jerr[200];
    dxk_vocab *v;
    dexec_status s = DEXEC_OK;
    size_t i;

    *out = NULL;
    v = calloc(1, sizeof *v);
    if (v == NULL || (v->class_names = calloc((size_t)K, sizeof *v->class_names)) == NULL) {
        free(v);
        snprintf(err, errlen, "%s: out of memory", st->path);
        return DEXEC_ENOMEM;
    }
    v->num_classes = K;
    if (names != NULL) {
        jn = dexec_value_from_json(names, strlen(names), jerr, sizeof jerr);
        if (jn == NULL || jn->type != DEXEC_VAL_ARRAY || jn->u.arr.len != (size_t)K) {
            snprintf(err, errlen,
                     "%s: metadata 'dexec.class_names' must be a JSON array of %d strings%s%s",
                     st->path, K, jn == NULL ? ": " : "", jn == NULL ? jerr : "");
            s = DEXEC_EINVAL;
            goto out;
        }
    }
    for (i = 0; i < (size_t)K; i++) {
        char buf[32];
        const char *name = buf;

        if (jn != NULL) {
            const dexec_value *e = jn->u.arr.items[i];

            if (e->type != DEXEC_VAL_STR) {
                snprintf(err, errlen, "%s: metadata 'dexec.class_names'[%zu] is not a string",
                         st->path, i);
                s = DEXEC_EINVAL;
                goto out;
            }
            name = e->u.str.ptr;
        } else {
            snprintf(buf, sizeof buf, "class%zu", i);
        }
        if ((v->class_names[i] = strdup(name)) == NULL) {
            s = DEXEC_ENOMEM;
            goto out;
        }
    }
    if (vocab != NULL) {
        jv = dexec_value_from_json(vocab, strlen(vocab), jerr, sizeof jerr);
        if (jv == NULL || jv->type != DEXEC_VAL_MAP) {
            snprintf(err, errlen, "%s: metadata 'dexec.vocab' must be a JSON object%s%s",
                     st->path, jv == NULL ? ": " : "", jv == NULL ? jerr : "");
            s = DEXEC_EINVAL;
            goto out;
        }
        for (i = 0; i < jv->u.map.len && s == DEXEC_OK; i++) {
            const dexec_kv *kv = &jv->u.map.items[i];

            if (kv->val->type != DEXEC_VAL_INT || kv->val->u.i < 0 || kv->val->u.i >= K) {
                snprintf(err, errlen,
                         "%s: metadata 'dexec.vocab': '%s' must map to a class index in 0..%d",
                         st->path, kv->key, K - 1);
                s = DEXEC_EINVAL;
                goto out;
            }
            s = dx_vocab_add(v, kv->key, (int)kv->val->u.i);
        }
    } else {
        for (i = 0; i < (size_t)K && s == DEXEC_OK; i++)
            s = dx_vocab_add(v, v->class_names[i], (int)i);
    }
out:
    if (s == DEXEC_ENOMEM)
        snprintf(err, errlen, "%s: out of memory", st->path);
    dexec_value_free(jn);
    dexec_value_free(jv);
    if (s != DEXEC_OK) {
        dxk_vocab_free(v);
        return s;
    }
    *out = v;
    return DEXEC_OK;
}

/* ", "-separated vocabulary keys, cut to fit the message. */
static void dx_known_words(const dxk_vocab *v, char *buf, size_t len)
{
    size_t o = 0, i;

    buf[0] = '\0';
    for (i = 0; i < v->n && o + 1 < len; i++) {
        int w = snprintf(buf + o, len - o, "%s%s", i ? ", " : "", v->words[i]);

        if (w < 0 || (size_t)w >= len - o)
            break;
        o += (size_t)w;
    }
    if (v->n == 0)
        snprintf(buf, len, "(none: this model only generates unconditionally)");
}

dexec_status dxk_prompt_class(const dxk_vocab *v, const char *prompt, int *cls, char *err,
                              size_t errlen)
{
    char *norm = dxk_prompt_normalize(prompt);
    char known[1024], found[256];
    size_t i, fo = 0;
    int c = -1, conflict = 0;

    if (norm == NULL) {
        snprintf(err, errlen, "out of memory");
        return DEXEC_ENOMEM;
    }
    if (norm[0] == '\0') {
        free(norm);
        *cls = v->num_classes;
        return DEXEC_OK;
    }
    for (i = 0; i < v->n; i++) {
        if (strcmp(norm, v->words[i]) == 0) {
            free(norm);
            *cls = v->classes[i];
            return DEXEC_OK;
        }
    }
    found[0] = '\0';
    for (i = 0; i < v->n; i++) {
        if (!dx_has_word(norm, v->words[i]))
            continue;
        if (c >= 0 && c != v->classes[i])
            conflict = 1;
        if (c < 0)
            c = v->classes[i];
        if (fo + 1 < sizeof found) {
            int w = snprintf(found + fo, sizeof found - fo, "%s'%s' (%s)", fo ? ", " : "",
                             v->words[i], v->class_names[v->classes[i]]);

            if (w > 0)
                fo += (size_t)w;
        }
    }
    if (c >= 0 && !conflict) {
        free(norm);
        *cls = c;
        return DEXEC_OK;
    }
    dx_known_words(v, known, sizeof known);
    if (conflict)
        snprintf(err, errlen, "prompt '%s' names several classes: %s; known words: %s", norm,
                 found, known);
    else
        snprintf(err, errlen, "prompt '%s' names no class of this model; known words: %s", norm,
                 known);
    free(norm);
    return DEXEC_EINVAL;
}

dexec_status dxk_vocab_from_labels(const char *const *labels, int K, dxk_vocab **out, char *err,
                                   size_t errlen)
{
    dxk_vocab *v = calloc(1, sizeof *v);
    dexec_status s = DEXEC_OK;
    int i;

    *out = NULL;
    if (v == NULL || (v->class_names = calloc((size_t)K, sizeof *v->class_names)) == NULL) {
        free(v);
        snprintf(err, errlen, "out of memory");
        return DEXEC_ENOMEM;
    }
    v->num_classes = K;
    for (i = 0; i < K && s == DEXEC_OK; i++) {
        const char *p = labels[i];

        if ((v->class_names[i] = strdup(p)) == NULL) {
            s = DEXEC_ENOMEM;
            break;
        }
        while (*p != '\0' && s == DEXEC_OK) {
            size_t len = strcspn(p, ",");
            char *word = strndup(p, len);

            if (word == NULL) {
                s = DEXEC_ENOMEM;
                break;
            }
            if (word[strspn(word, " ")] != '\0')
                s = dx_vocab_add(v, word, i);
            free(word);
            p += len;
            if (*p == ',')
                p++;
        }
    }
    if (s != DEXEC_OK) {
        snprintf(err, errlen, "out of memory");
        dxk_vocab_free(v);
        return s;
    }
    *out = v;
    return DEXEC_OK;
}
