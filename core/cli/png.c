/* png.c - writes generated images as PNG (libpng) with the generation
 * parameters as text chunks: tEXt for plain ASCII, iTXt (UTF-8, as the PNG
 * specification requires for anything outside Latin-1) otherwise. */
#include "config.h"

#include <errno.h>
#include <png.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static int is_ascii(const char *s)
{
    for (; *s != '\0'; s++)
        if ((unsigned char)*s >= 0x80)
            return 0;
    return 1;
}

/* A growing memory buffer: the in-memory destination of encode(). */
typedef struct membuf {
    unsigned char *data;
    size_t len, cap;
    int failed;
} membuf;

static void mem_write(png_structp png, png_bytep data, png_size_t n)
{
    membuf *m = png_get_io_ptr(png);

    if (m->failed)
        return;
    if (m->len + n > m->cap) {
        size_t cap = m->cap > 0 ? m->cap : 4096;
        unsigned char *p;

        while (cap < m->len + n)
            cap *= 2;
        p = realloc(m->data, cap);
        if (p == NULL) {
            m->failed = 1;
            png_error(png, "out of memory");
        }
        m->data = p;
        m->cap = cap;
    }
    memcpy(m->data + m->len, data, n);
    m->len += n;
}

static void mem_flush(png_structp png)
{
    (void)png;
}

/* Encodes img into f, or into mem when f is NULL. label names the
 * destination in messages. 0, or -1 with a message in err. */
static int encode(const char *label, FILE *f, membuf *mem, const dexec_image *img,
                  const char *const *text, char *err, size_t errlen)
{
    png_structp png = NULL;
    png_infop info = NULL;
    png_text chunks[16];
    volatile int nchunks = 0;
    int color;

    if (img->channels == 1)
        color = PNG_COLOR_TYPE_GRAY;
    else if (img->channels == 3)
        color = PNG_COLOR_TYPE_RGB;
    else if (img->channels == 4)
        color = PNG_COLOR_TYPE_RGBA;
    else {
        snprintf(err, errlen, "%s: cannot write an image with %d channels", label, img->channels);
        return -1;
    }
    png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    if (png != NULL)
        info = png_create_info_struct(png);
    if (png == NULL || info == NULL) {
        snprintf(err, errlen, "%s: out of memory", label);
        png_destroy_write_struct(&png, &info);
        return -1;
    }
    if (setjmp(png_jmpbuf(png))) {
        snprintf(err, errlen, "%s: libpng failed to write the image", label);
        png_destroy_write_struct(&png, &info);
        return -1;
    }
    if (f != NULL)
        png_init_io(png, f);
    else
        png_set_write_fn(png, mem, mem_write, mem_flush);
    png_set_IHDR(png, info, (png_uint_32)img->width, (png_uint_32)img->height, 8, color,
                 PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    for (int i = 0; text != NULL && text[i] != NULL && text[i + 1] != NULL && nchunks < 16;
         i += 2) {
        memset(&chunks[nchunks], 0, sizeof(chunks[0]));
        chunks[nchunks].compression =
            is_ascii(text[i + 1]) ? PNG_TEXT_COMPRESSION_NONE : PNG_ITXT_COMPRESSION_NONE;
        chunks[nchunks].key = (png_charp)text[i];
        chunks[nchunks].text = (png_charp)text[i + 1];
        chunks[nchunks].lang = (png_charp) "";
        chunks[nchunks].lang_key = (png_charp) "";
        nchunks++;
    }
    if (nchunks > 0)
        png_set_text(png, info, chunks, (int)nchunks);
    png_write_info(png, info);
    for (int y = 0; y < img->height; y++)
        png_write_row(png, img->pixels + (size_t)y * (size_t)img->width * (size_t)img->channels);
    png_write_end(png, NULL);
    png_destroy_write_struct(&png, &info);
    return 0;
}

int cli_write_png(const char *path, const dexec_image *img, const char *const *text, char *err,
                  size_t errlen)
{
    const char *label = path != NULL ? path : "standard output";
    FILE *f;

    if (img->channels != 1 && img->channels != 3 && img->channels != 4) {
        snprintf(err, errlen, "%s: cannot write an image with %d channels", label, img->channels);
        return -1;
    }
    f = path != NULL ? fopen(path, "wbe") : stdout;
    if (f == NULL) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    if (encode(label, f, NULL, img, text, err, errlen) != 0) {
        if (path != NULL) {
            fclose(f);
            remove(path);
        }
        return -1;
    }
    if (path == NULL ? fflush(f) != 0 : fclose(f) != 0) {
        snprintf(err, errlen, "%s: %s", label, strerror(errno));
        return -1;
    }
    return 0;
}

int cli_png_encode(const dexec_image *img, const char *const *text, unsigned char **out,
                   size_t *len, char *err, size_t errlen)
{
    membuf m = {0};

    if (encode("PNG in memory", NULL, &m, img, text, err, errlen) != 0) {
        free(m.data);
        return -1;
    }
    *out = m.data;
    *len = m.len;
    return 0;
}
