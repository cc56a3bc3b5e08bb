"""The programs every tutorial writes by hand, as faithful baselines for cnnkit's benchmarks.

Written the tutorials' way on purpose: torchvision datasets read through a DataLoader with per-sample
ToTensor/Normalize transforms, a fixed learning rate, and a plain loop over batches.
"""

from __future__ import annotations

import gzip
import shutil
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
import torchvision.transforms as T


class MnistNet(nn.Module):
    """PyTorch's MNIST example network."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(self.dropout1(x), 1)
        x = self.dropout2(F.relu(self.fc1(x)))
        return self.fc2(x)


class CifarNet(nn.Module):
    """The network of PyTorch's 'Training a classifier' CIFAR-10 tutorial (LeNet-5)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def unpack_mnist(data_dir: Path, into: Path) -> Path:
    """torchvision's MNIST class wants unpacked IDX files (the shared .gz files fail its checksums)."""
    raw = into / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for gz in (data_dir / "MNIST" / "raw").glob("*.gz"):
        with gzip.open(gz) as src, open(raw / gz.stem, "wb") as dst:
            shutil.copyfileobj(src, dst)
    return into


def accuracy(net: nn.Module, loader, device: str = "cpu") -> float:
    net.eval()
    correct = total = 0
    with torch.no_grad():
        for images, labels in loader:
            images, labels = images.to(device), labels.to(device)
            correct += (net(images).argmax(1) == labels).sum().item()
            total += len(labels)
    return correct / total


def train_loop(net: nn.Module, loader, epochs: int, lr: float, device: str = "cpu") -> None:
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    for epoch in range(epochs):
        net.train()
        running = 0.0
        for i, (images, labels) in enumerate(loader):
            images, labels = images.to(device), labels.to(device)
            optimizer.zero_grad()
            loss = criterion(net(images), labels)
            loss.backward()
            optimizer.step()
            running += loss.item()
            if i % 2000 == 1999:
                print(f"  [tutorial] epoch {epoch + 1}, batch {i + 1}: loss {running / 2000:.3f}", flush=True)
                running = 0.0


def tutorial_mnist(data_dir: Path, epochs: int = 5, device: str = "cpu") -> tuple[float, float]:
    """PyTorch's MNIST example net, batch 64, SGD lr 0.01 momentum 0.9: (test accuracy, wall seconds)."""
    started = time.perf_counter()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = unpack_mnist(data_dir, Path(tmp))
        transform = T.Compose([T.ToTensor(), T.Normalize((0.5,), (0.5,))])
        train = torchvision.datasets.MNIST(str(root), train=True, transform=transform)
        test = torchvision.datasets.MNIST(str(root), train=False, transform=transform)
        net = MnistNet().to(device)
        train_loop(net, torch.utils.data.DataLoader(train, batch_size=64, shuffle=True), epochs, 0.01, device)
        result = accuracy(net, torch.utils.data.DataLoader(test, batch_size=1000), device)
    return result, time.perf_counter() - started


def tutorial_cifar(folder: Path, epochs: int = 2) -> tuple[float, float]:
    """LeNet, batch 4, SGD lr 0.001 momentum 0.9, 2 DataLoader workers: (test accuracy, wall seconds)."""
    started = time.perf_counter()
    torch.manual_seed(0)
    transform = T.Compose([T.ToTensor(), T.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])
    train = torchvision.datasets.ImageFolder(str(folder / "train"), transform=transform)
    test = torchvision.datasets.ImageFolder(str(folder / "test"), transform=transform)
    net = CifarNet()
    train_loop(net, torch.utils.data.DataLoader(train, batch_size=4, shuffle=True, num_workers=2), epochs, lr=0.001)
    result = accuracy(net, torch.utils.data.DataLoader(test, batch_size=4, num_workers=2))
    return result, time.perf_counter() - started
