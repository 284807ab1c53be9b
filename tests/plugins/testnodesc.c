/* testnodesc.c - a test-only shared object that exports no dexec_plugin
 * symbol: refused as "not a dexec plugin". */
#include "config.h"

int testnodesc_answer(void);

int testnodesc_answer(void)
{
    return 42;
}
