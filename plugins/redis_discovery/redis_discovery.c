/* redis_discovery - being written */
