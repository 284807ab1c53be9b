/* value.c - being written */
