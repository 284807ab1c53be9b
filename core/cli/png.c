/* png.c - being written */
