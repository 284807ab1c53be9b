/* msgpack_codec.c - being written */
