"""Loaders behind `lab.datasets`: procedural shapes, sklearn digits, torchvision sets, image folders."""
