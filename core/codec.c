/* codec.c - being written */
