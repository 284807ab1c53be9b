/* ray_actor - being written */
