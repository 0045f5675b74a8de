"""The project itself: import layers, the wheel, docker-compose.yml."""
