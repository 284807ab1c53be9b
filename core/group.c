/* group.c - being written */
