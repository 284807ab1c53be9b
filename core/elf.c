/*
 * elf.c - reads the bytes of a symbol's object from a shared object's
 * file, without mapping it for execution.
 *
 * dlopen() runs a plugin's constructors (and those of every library it
 * pulls in) before dlsym() can hand over the descriptor, so checking the
 * descriptor after dlopen would run code of a plugin built for another
 * ABI or meant as another kind. The loader therefore reads the head of
 * the descriptor from the file first (the dynamic symbol table gives its
 * address; the section that holds the address gives its file offset) and
 * checks what it can: the ABI version, the descriptor's size and the
 * kind. Pointers (name, ops) are relocated at load time and exist only
 * after dlopen; those are checked afterwards.
 *
 * Only ELF objects of the host's class and byte order are read; anything
 * else is left to dlopen, whose error says what is wrong with it.
 */
#include "config.h"

#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <link.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"

/* Larger tables are not a plugin's: refuse to read them. */
#define DX_ELF_MAX_SECTIONS 4096
#define DX_ELF_MAX_TABLE    (64u << 20)

static int read_at(int fd, off_t size, uint64_t off, void *buf, size_t len)
{
    size_t got = 0;

    if (off > (uint64_t)size || len > (uint64_t)size - off)
        return -1;
    while (got < len) {
        ssize_t n = pread(fd, (char *)buf + got, len - got, (off_t)(off + got));

        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        got += (size_t)n;
    }
    return 0;
}

/* A whole section into a new buffer (NUL-terminated for string tables). */
static char *read_section(int fd, off_t size, const ElfW(Shdr) * sh)
{
    char *buf;

    if (sh->sh_type == SHT_NOBITS || sh->sh_size > DX_ELF_MAX_TABLE)
        return NULL;
    buf = malloc(sh->sh_size + 1);
    if (buf == NULL)
        return NULL;
    if (read_at(fd, size, sh->sh_offset, buf, sh->sh_size) != 0) {
        free(buf);
        return NULL;
    }
    buf[sh->sh_size] = '\0';
    return buf;
}

/* Looks name up in the symbol table sh (SHT_DYNSYM or SHT_SYMTAB): 1 and
 * *out when it defines it, 0 when not, -1 when the table is unreadable. */
static int find_symbol(int fd, off_t size, const ElfW(Shdr) * shs, size_t nsh,
                       const ElfW(Shdr) * sh, const char *name, ElfW(Sym) * out)
{
    char *syms, *strs;
    size_t n;
    int found = 0;

    if (sh->sh_entsize != sizeof(ElfW(Sym)) || sh->sh_link >= nsh)
        return -1;
    syms = read_section(fd, size, sh);
    strs = read_section(fd, size, &shs[sh->sh_link]);
    if (syms == NULL || strs == NULL) {
        free(syms);
        free(strs);
        return -1;
    }
    n = sh->sh_size / sizeof(ElfW(Sym));
    for (size_t i = 1; i < n && !found; i++) {
        ElfW(Sym) s;

        memcpy(&s, syms + i * sizeof(s), sizeof(s));
        if (s.st_name < shs[sh->sh_link].sh_size && s.st_shndx != SHN_UNDEF &&
            strcmp(strs + s.st_name, name) == 0) {
            *out = s;
            found = 1;
        }
    }
    free(syms);
    free(strs);
    return found;
}

int dx_elf_symbol_head(const char *path, const char *name, void *out, size_t len, int *hidden)
{
    static const unsigned char ident[] = {ELFMAG0, ELFMAG1, ELFMAG2, ELFMAG3};
    ElfW(Ehdr) eh;
    ElfW(Shdr) *shs = NULL;
    ElfW(Sym) sym;
    struct stat sb;
    int fd, rc = -1, in_dyn = 0, in_all = 0;
    const ElfW(Shdr) * where;

    *hidden = 0;
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode) ||
        read_at(fd, sb.st_size, 0, &eh, sizeof(eh)) != 0 || memcmp(eh.e_ident, ident, 4) != 0 ||
        eh.e_ident[EI_CLASS] != (sizeof(void *) == 8 ? ELFCLASS64 : ELFCLASS32) ||
        eh.e_ident[EI_DATA] !=
            (__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__ ? ELFDATA2LSB : ELFDATA2MSB) ||
        eh.e_shentsize != sizeof(ElfW(Shdr)) || eh.e_shnum == 0 || eh.e_shnum > DX_ELF_MAX_SECTIONS)
        goto done;
    shs = malloc(eh.e_shnum * sizeof(*shs));
    if (shs == NULL || read_at(fd, sb.st_size, eh.e_shoff, shs, eh.e_shnum * sizeof(*shs)) != 0)
        goto done;
    for (size_t i = 0; i < eh.e_shnum && !in_dyn; i++)
        if (shs[i].sh_type == SHT_DYNSYM &&
            (in_dyn = find_symbol(fd, sb.st_size, shs, eh.e_shnum, &shs[i], name, &sym)) < 0)
            goto done;
    if (!in_dyn) {
        /* not exported: say whether it is there but hidden (a stripped
         * object has no .symtab, and then we cannot tell) */
        for (size_t i = 0; i < eh.e_shnum && !in_all; i++) {
            ElfW(Sym) s;

            if (shs[i].sh_type == SHT_SYMTAB)
                in_all = find_symbol(fd, sb.st_size, shs, eh.e_shnum, &shs[i], name, &s) == 1;
        }
        *hidden = in_all;
        rc = 1;
        goto done;
    }
    if (sym.st_shndx >= eh.e_shnum || ELF64_ST_VISIBILITY(sym.st_other) == STV_HIDDEN ||
        ELF64_ST_VISIBILITY(sym.st_other) == STV_INTERNAL) {
        *hidden = 1;
        rc = 1;
        goto done;
    }
    where = &shs[sym.st_shndx];
    if (sym.st_value < where->sh_addr || sym.st_value - where->sh_addr > where->sh_size ||
        len > where->sh_size - (sym.st_value - where->sh_addr) || sym.st_size < len)
        goto done;
    if (where->sh_type == SHT_NOBITS)
        memset(out, 0, len);
    else if (read_at(fd, sb.st_size, where->sh_offset + (sym.st_value - where->sh_addr), out,
                     len) != 0)
        goto done;
    rc = 0;
done:
    free(shs);
    close(fd);
    return rc;
}
