"""localchain"""
